package config

import (
	"bytes"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/viper"
)

// documentedAhead are keys docs/configuration.md describes before their code
// is in this branch (other engineers' work, merged by the lead). Once a key
// exists in the schema the test fails until it is removed from here, so this
// list cannot go stale.
var documentedAhead = map[string]bool{}

// schemaKeys lists every key of the YAML schema from the mapstructure tags of
// raw: nested sections as "a.b", lists of objects as "routes[].name".
func schemaKeys(t reflect.Type, prefix string, out map[string]bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("mapstructure"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		switch ft := f.Type; {
		case ft.Kind() == reflect.Struct:
			schemaKeys(ft, key+".", out)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			schemaKeys(ft.Elem(), key+"[].", out)
		default:
			out[key] = true
		}
	}
}

var docKeyRe = regexp.MustCompile("^\\| `([a-z_.\\[\\]]+)` \\|")

// docKeys lists the keys of the reference's tables (a row's first cell).
func docKeys(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if m := docKeyRe.FindStringSubmatch(line); m != nil {
			if out[m[1]] {
				t.Errorf("docs/configuration.md documents %s twice", m[1])
			}
			out[m[1]] = true
		}
	}
	return out
}

// The configuration reference documents every key of the schema, and no key
// that does not exist (but those documented ahead of their code).
func TestConfigReferenceMatchesSchema(t *testing.T) {
	code := map[string]bool{}
	schemaKeys(reflect.TypeOf(raw{}), "", code)
	docs := docKeys(t)
	var missing, unknown, stale []string
	for k := range code {
		if !docs[k] {
			missing = append(missing, k)
		}
		if documentedAhead[k] {
			stale = append(stale, k)
		}
	}
	for k := range docs {
		if !code[k] && !documentedAhead[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(unknown)
	sort.Strings(stale)
	if len(missing) > 0 {
		t.Errorf("keys of the schema missing from docs/configuration.md (add a table row each): %s", strings.Join(missing, ", "))
	}
	if len(unknown) > 0 {
		t.Errorf("docs/configuration.md documents keys the schema does not have: %s", strings.Join(unknown, ", "))
	}
	if len(stale) > 0 {
		t.Errorf("keys now in the schema: remove them from documentedAhead in config/docs_test.go: %s", strings.Join(stale, ", "))
	}
	if len(code) < 40 {
		t.Fatalf("only %d keys derived from the schema: the reflection walk is broken", len(code))
	}
}

// Every scalar key the reference documents has its default in defaults
// (the environment can override exactly those), and the example file uses
// only keys of the schema (it validates: TestExampleFileIsValid).
func TestDefaultsCoverEveryScalarKey(t *testing.T) {
	code := map[string]bool{}
	schemaKeys(reflect.TypeOf(raw{}), "", code)
	for k := range code {
		if strings.Contains(k, "[]") {
			continue
		}
		if _, ok := defaults[k]; !ok {
			t.Errorf("%s has no entry in defaults: it cannot be overridden from the environment", k)
		}
	}
}

// config.example.yaml sets every key of the schema (each with a comment), so
// the file the package installs shows an operator all there is.
func TestExampleFileHasEveryKey(t *testing.T) {
	data, err := os.ReadFile("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	in := map[string]bool{}
	for _, k := range v.AllKeys() {
		in[k] = true
	}
	if routes, ok := v.Get("routes").([]any); ok && len(routes) > 0 {
		if r, ok := routes[0].(map[string]any); ok {
			for k := range r {
				in["routes[]."+k] = true
			}
		}
	}
	code := map[string]bool{}
	schemaKeys(reflect.TypeOf(raw{}), "", code)
	var missing []string
	for k := range code {
		if !in[k] {
			missing = append(missing, k)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("config.example.yaml lacks: %s", strings.Join(missing, ", "))
	}
}
