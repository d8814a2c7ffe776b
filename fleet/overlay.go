package fleet

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	yaml "go.yaml.in/yaml/v3"
)

// Sections an overlay may set: those a running gateway applies without a
// restart, and receipts (applied at the next start). Anything else (the
// Kafka credentials, the id, the admin endpoint, fleet itself) stays the
// local file's: a key that could change who the box talks to, or which
// keys it trusts, never comes from the topic it trusts them for.
var Sections = []string{"routes", "unrouted", "buffer", "link", "acl", "log", "receipts"}

// MaxOverlayBytes bounds an overlay's value.
const MaxOverlayBytes = 256 << 10

// Refusal reasons: the `reason` of a refused overlay in the status record
// and the label of gateway_remote_config_refused_total.
const (
	ReasonUnsigned  = "unsigned"      // no signature header
	ReasonBadSig    = "bad_signature" // not signed by any key of fleet.config_keys
	ReasonOlder     = "older"         // version not newer than the one applied
	ReasonSection   = "section"       // sets a section outside Sections
	ReasonInvalid   = "invalid"       // the local file with it does not validate
	ReasonMalformed = "malformed"     // no or a bad version header, not a YAML mapping, too large
)

// Overlay is an accepted config record.
type Overlay struct {
	Key       string    `json:"key"` // a gateway id, or AllBoxes
	Version   uint64    `json:"version"`
	Value     string    `json:"value"` // the YAML, byte for byte as signed
	Signature string    `json:"signature"`
	KeyID     string    `json:"key_id"` // the key that verified it
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
	Accepted  time.Time `json:"accepted"`
}

// Refusal is an overlay the box did not apply, and why.
type Refusal struct {
	Key     string    `json:"key"`
	Version uint64    `json:"version"`
	Offset  int64     `json:"offset"`
	Reason  string    `json:"reason"`
	Detail  string    `json:"detail"`
	At      time.Time `json:"at"`
}

func (r Refusal) String() string {
	return fmt.Sprintf("overlay for %q version %d (offset %d) refused: %s: %s", r.Key, r.Version, r.Offset, r.Reason, r.Detail)
}

// CheckSections checks that value is a YAML mapping (or empty: an overlay
// that sets nothing, which withdraws an earlier one) whose top-level keys
// are all in Sections. Keys compare case-insensitively, as the config reads
// them.
func CheckSections(value []byte) error {
	if len(value) > MaxOverlayBytes {
		return fmt.Errorf("%d bytes, more than the %d an overlay may have", len(value), MaxOverlayBytes)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(value, &doc); err != nil {
		return fmt.Errorf("not YAML: %s", strings.ReplaceAll(err.Error(), "\n", " "))
	}
	if doc.Kind == 0 {
		return nil // empty document
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil
	}
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("not a YAML mapping of sections")
	}
	var bad []string
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := strings.ToLower(root.Content[i].Value)
		if !allowedSection(k) {
			bad = append(bad, root.Content[i].Value)
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("sets %s, which an overlay may not change (allowed: %s)", strings.Join(bad, ", "), strings.Join(Sections, ", "))
	}
	return nil
}

func allowedSection(k string) bool {
	for _, s := range Sections {
		if k == s {
			return true
		}
	}
	return false
}

// ParseVersion reads a gw.config.version header: a decimal number above 0.
func ParseVersion(s string) (uint64, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("gw.config.version %q is not a whole number above 0", s)
	}
	return v, nil
}

// Partition is the partition of the config topic that holds key's records:
// the Java client's default partitioner (murmur2 of the key), which the
// push command uses too. A box reads only the partitions of its id and of
// AllBoxes.
func Partition(key string, partitions int32) int32 {
	if partitions <= 1 {
		return 0
	}
	p, err := sarama.NewMurmur2Partitioner("").Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(key)}, partitions)
	if err != nil {
		return 0 // only for a nil key, which this is not
	}
	return p
}

// Layers are the overlays to merge over the local file, in order: the one
// for every box first, the box's own over it.
func Layers(applied map[string]*Overlay, id string) [][]byte {
	var out [][]byte
	for _, k := range []string{AllBoxes, id} {
		if o := applied[k]; o != nil && len(bytes.TrimSpace([]byte(o.Value))) > 0 {
			out = append(out, []byte(o.Value))
		}
	}
	return out
}
