package admin

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// Receipts dropped undelivered show in /status (by reason and in total, also
// with nothing pending) and on the receipts line of `gateway status`.
func TestReceiptsDroppedShown(t *testing.T) {
	src := (&fakeSources{receipts: map[string]int{"t-1": 2}}).sources()
	src.ReceiptsDropped = func() map[string]uint64 { return map[string]uint64{"max_age": 3, "invalid_device": 1} }
	_, url := startServer(t, src)
	resp, err := http.Get(url + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	st := &Status{}
	if err := json.NewDecoder(resp.Body).Decode(st); err != nil {
		t.Fatal(err)
	}
	if st.Receipts == nil || st.Receipts.DroppedTotal != 4 || st.Receipts.Dropped["max_age"] != 3 ||
		st.Receipts.Dropped["invalid_device"] != 1 || st.Receipts.PendingTotal != 2 {
		t.Fatalf("receipts = %+v", st.Receipts)
	}
	b, err := json.Marshal(st.Receipts)
	if err != nil || !strings.Contains(string(b), `"dropped":{"invalid_device":1,"max_age":3}`) ||
		!strings.Contains(string(b), `"dropped_total":4`) {
		t.Fatalf("json %s %v", b, err)
	}
	var buf bytes.Buffer
	PrintStatus(&buf, st)
	if want := "receipts: 2 pending for 1 device (most: t-1 2); 4 dropped undelivered (invalid_device 1, max_age 3)"; !strings.Contains(buf.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, buf.String())
	}

	// Dropped alone still makes a report; none dropped adds nothing to the line.
	src = (&fakeSources{}).sources()
	src.ReceiptsPending = nil
	src.ReceiptsDropped = func() map[string]uint64 { return map[string]uint64{"max_age": 5} }
	if line := receiptsLine(buildStatus(&src, fixedNow).Receipts); line != "receipts: none pending; 5 dropped undelivered (max_age 5)" {
		t.Errorf("line %q", line)
	}
	src.ReceiptsDropped = func() map[string]uint64 { return map[string]uint64{"max_age": 0} }
	if line := receiptsLine(buildStatus(&src, fixedNow).Receipts); line != "receipts: none pending" {
		t.Errorf("line %q", line)
	}
}
