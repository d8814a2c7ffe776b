// Package docs holds the project's documentation (Markdown) and the tests
// that keep it true: links resolve, and the Grafana dashboard queries only
// documented metrics. The configuration reference is checked in config/,
// the metrics reference against a running gateway in e2e/.
package docs

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// markdownLinkRe finds [text](target) links, not images' alt text handling
// beyond that: an image's target is a link to check as well.
var markdownLinkRe = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// Every relative link in README.md and docs/*.md names a file inside the
// repository, and a #fragment names a heading of that file.
func TestLinksResolveInsideRepository(t *testing.T) {
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	pages, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, "../README.md", "../CHANGELOG.md")
	if len(pages) < 8 {
		t.Fatalf("only %d pages found", len(pages))
	}
	checked := 0
	for _, page := range pages {
		data, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range markdownLinkRe.FindAllStringSubmatch(stripCode(string(data)), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			checked++
			file, frag, _ := strings.Cut(target, "#")
			path := page
			if file != "" {
				path = filepath.Join(filepath.Dir(page), file)
			}
			abs, err := filepath.Abs(path)
			if err != nil {
				t.Fatal(err)
			}
			if abs != repo && !strings.HasPrefix(abs, repo+string(filepath.Separator)) {
				t.Errorf("%s: link %q leaves the repository", page, target)
				continue
			}
			if _, err := os.Stat(abs); err != nil {
				t.Errorf("%s: link %q: %v", page, target, err)
				continue
			}
			if frag != "" && strings.HasSuffix(abs, ".md") {
				body, err := os.ReadFile(abs)
				if err != nil {
					t.Fatal(err)
				}
				if !anchors(string(body))[frag] {
					t.Errorf("%s: link %q: no heading with that anchor in %s", page, target, file)
				}
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d links checked: the link pattern is broken", checked)
	}
}

// stripCode removes fenced code blocks, whose brackets are not links.
func stripCode(s string) string {
	var out []string
	in := false
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			in = !in
			continue
		}
		if !in {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

var nonSlugRe = regexp.MustCompile(`[^\p{L}\p{N} _-]`)

// anchors are the GitHub-style anchors of a page's headings: lower case,
// punctuation dropped, spaces as hyphens.
func anchors(page string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(stripCode(page), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(line, "#"))
		slug := strings.ReplaceAll(nonSlugRe.ReplaceAllString(strings.ToLower(h), ""), " ", "-")
		out[slug] = true
	}
	return out
}

var metricNameRe = regexp.MustCompile(`\b(?:gateway|go|process)_[a-z0-9_]+\b`)

// The Grafana dashboard is valid JSON with panels that each query something,
// and every metric its queries name is in the metrics reference.
func TestGrafanaDashboardUsesDocumentedMetrics(t *testing.T) {
	data, err := os.ReadFile("../deploy/grafana/gateway.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("deploy/grafana/gateway.json is not valid JSON: %v", err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Fatal("dashboard without uid or title")
	}
	ref, err := os.ReadFile("metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z0-9_]+)` \\|").FindAllStringSubmatch(string(ref), -1) {
		documented[m[1]] = true
	}
	var exprs []string
	queries := 0
	ids := map[int]string{}
	for _, p := range dash.Panels {
		if other, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
			exprs = append(exprs, tg.Expr)
			queries++
		}
	}
	for _, v := range dash.Templating.List {
		if b, err := json.Marshal(v.Query); err == nil {
			exprs = append(exprs, string(b))
		}
	}
	unknown := map[string]bool{}
	used := 0
	for _, e := range exprs {
		for _, name := range metricNameRe.FindAllString(e, -1) {
			used++
			if !documented[name] {
				unknown[name] = true
			}
		}
	}
	var names []string
	for n := range unknown {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) > 0 {
		t.Errorf("the dashboard queries metrics docs/metrics.md does not list: %s", strings.Join(names, ", "))
	}
	if queries < 10 || used < 10 {
		t.Fatalf("only %d queries naming %d metrics: the dashboard format changed?", queries, used)
	}
	// What an operator must see at a glance on day two has a panel: dead
	// letters, refused connections, refused (and ACL-denied) publishes.
	all := strings.Join(exprs, "\n")
	for _, want := range []string{"gateway_dead_letters_total", "gateway_mqtt_connect_refused_total", "gateway_ingest_refused_total", `reason="acl_denied"`} {
		if !strings.Contains(all, want) {
			t.Errorf("no dashboard panel queries %s", want)
		}
	}
}
