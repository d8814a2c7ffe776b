package config

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var versionRe = regexp.MustCompile(`^\d+\.\d+\.\d+(\.\d+)?$`)

// sizeUnits are the accepted size suffixes: binary units only, and a plain
// number is bytes. Decimal units (KB MB GB TB) are refused rather than read:
// "1GB" meaning 1,000,000,000 or 1,073,741,824 bytes is a 7% question an
// operator should not have to guess, and the documentation uses KiB MiB GiB.
var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"B", 1}, {"", 1},
}

// SizeUnits lists the accepted size units, for messages and documentation.
const SizeUnits = "B KiB MiB GiB TiB"

// ErrDecimalSizeUnit is returned by ParseSize for KB, MB, GB, TB (and kB):
// decimal units are not accepted, see sizeUnits.
var ErrDecimalSizeUnit = errors.New("decimal units (KB MB GB TB) are not accepted: use " + SizeUnits + " (1GiB = 1073741824 bytes) or a plain number of bytes")

var decimalUnitRe = regexp.MustCompile(`^[0-9.\s]+([kKMGT]B|[kKMGT])$`)

// ParseSize reads "512MiB", "1GiB", "100KiB", "262144" (bytes). A fractional
// number is allowed with a unit ("1.5GiB"). Decimal units ("1GB") are refused
// with ErrDecimalSizeUnit.
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty size")
	}
	if decimalUnitRe.MatchString(s) {
		return 0, fmt.Errorf("size %q: %w", s, ErrDecimalSizeUnit)
	}
	for _, u := range sizeUnits {
		if !strings.HasSuffix(s, u.suffix) {
			continue
		}
		num := strings.TrimSpace(strings.TrimSuffix(s, u.suffix))
		if num == "" {
			return 0, fmt.Errorf("no number in size %q", s)
		}
		if n, err := strconv.ParseInt(num, 10, 64); err == nil {
			if n < 0 || (u.mult > 1 && n > (1<<62)/u.mult) {
				return 0, fmt.Errorf("size %q out of range", s)
			}
			return n * u.mult, nil
		}
		f, err := strconv.ParseFloat(num, 64)
		if err != nil || f < 0 || f*float64(u.mult) > 1<<62 {
			return 0, fmt.Errorf("bad size %q", s)
		}
		return int64(f * float64(u.mult)), nil
	}
	return 0, fmt.Errorf("bad size %q", s)
}

// FormatSize prints bytes with the largest binary unit that keeps it readable.
func FormatSize(n int64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 2, 64) + "GiB"
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + "MiB"
	case n >= 1<<10:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + "KiB"
	}
	return strconv.FormatInt(n, 10) + "B"
}

// ParseWindow reads "22:00-06:00" (local time; an end before the start wraps
// past midnight).
func ParseWindow(s string) (Window, error) {
	parts := strings.Split(strings.TrimSpace(s), "-")
	if len(parts) != 2 {
		return Window{}, fmt.Errorf("must be a time range like 22:00-06:00, not %q", s)
	}
	start, err1 := parseClock(parts[0])
	end, err2 := parseClock(parts[1])
	if err1 != nil || err2 != nil {
		return Window{}, fmt.Errorf("must be a time range like 22:00-06:00, not %q", s)
	}
	if start == end {
		return Window{}, fmt.Errorf("start and end are equal in %q; leave link.windows empty to drain always", s)
	}
	return Window{Start: start, End: end, Text: strings.TrimSpace(s)}, nil
}

func parseClock(s string) (time.Duration, error) {
	t, err := time.Parse("15:04", strings.TrimSpace(s))
	if err != nil {
		return 0, err
	}
	return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute, nil
}

// Contains reports whether the local time t falls inside the window.
func (w Window) Contains(t time.Time) bool {
	off := time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute + time.Duration(t.Second())*time.Second
	if w.Start < w.End {
		return off >= w.Start && off < w.End
	}
	return off >= w.Start || off < w.End
}

// CheckFilter validates an MQTT topic filter: "+" and "#" occupy whole levels
// and "#" comes last.
func CheckFilter(f string) error {
	if f == "" {
		return errors.New("empty topic filter")
	}
	if len(f) > 65535 || strings.ContainsRune(f, 0) {
		return fmt.Errorf("invalid topic filter %q", f)
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("invalid topic filter %q: # must be a whole level and the last one", f)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("invalid topic filter %q: + must be a whole level", f)
		}
	}
	return nil
}

var kafkaTopicRe = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// CheckKafkaTopic validates a Kafka topic name.
func CheckKafkaTopic(t string) error {
	if !kafkaTopicRe.MatchString(t) || t == "." || t == ".." {
		return fmt.Errorf("invalid Kafka topic %q: use 1-249 of a-z A-Z 0-9 . _ -", t)
	}
	return nil
}
