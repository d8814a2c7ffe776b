package config

import (
	"fmt"
	"strconv"
	"strings"
)

// Template is a parsed key template such as "{client_id}" or "site-{topic.1}".
// Placeholders: {client_id} {username} {topic} {topic.N} (N-th level, 0-based).
type Template struct {
	parts []tmplPart
}

type tmplPart struct {
	lit   string
	field string // "" for a literal; client_id | username | topic | topic.N
	level int
}

// TemplateInput is what a template can draw on.
type TemplateInput struct {
	ClientID, Username, Topic string
}

// ParseTemplate checks and compiles a key template.
func ParseTemplate(s string) (Template, error) {
	var t Template
	for len(s) > 0 {
		i := strings.IndexAny(s, "{}")
		if i < 0 {
			t.parts = append(t.parts, tmplPart{lit: s})
			break
		}
		if s[i] == '}' {
			return Template{}, fmt.Errorf("unmatched } in key template")
		}
		if i > 0 {
			t.parts = append(t.parts, tmplPart{lit: s[:i]})
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return Template{}, fmt.Errorf("unclosed { in key template")
		}
		name := s[i+1 : i+j]
		p := tmplPart{field: name}
		switch {
		case name == "client_id" || name == "username" || name == "topic":
		case strings.HasPrefix(name, "topic."):
			n, err := strconv.Atoi(strings.TrimPrefix(name, "topic."))
			if err != nil || n < 0 || n > 1000 {
				return Template{}, fmt.Errorf("bad placeholder {%s}: use {topic.N} with N a level number from 0", name)
			}
			p.field, p.level = "topic.N", n
		default:
			return Template{}, fmt.Errorf("unknown placeholder {%s}: use {client_id} {username} {topic} or {topic.N}", name)
		}
		t.parts = append(t.parts, p)
		s = s[i+j+1:]
	}
	return t, nil
}

// MustTemplate is ParseTemplate for strings already validated.
func MustTemplate(s string) Template {
	t, err := ParseTemplate(s)
	if err != nil {
		panic(err)
	}
	return t
}

// Render fills the template; a {topic.N} past the last level is empty.
func (t Template) Render(in TemplateInput) string {
	if len(t.parts) == 1 && t.parts[0].field == "client_id" {
		return in.ClientID // the common case, without building
	}
	var b strings.Builder
	for _, p := range t.parts {
		switch p.field {
		case "":
			b.WriteString(p.lit)
		case "client_id":
			b.WriteString(in.ClientID)
		case "username":
			b.WriteString(in.Username)
		case "topic":
			b.WriteString(in.Topic)
		case "topic.N":
			b.WriteString(topicLevel(in.Topic, p.level))
		}
	}
	return b.String()
}

func topicLevel(topic string, n int) string {
	for i := 0; i < n; i++ {
		j := strings.IndexByte(topic, '/')
		if j < 0 {
			return ""
		}
		topic = topic[j+1:]
	}
	if j := strings.IndexByte(topic, '/'); j >= 0 {
		return topic[:j]
	}
	return topic
}
