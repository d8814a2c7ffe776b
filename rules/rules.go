// Package rules compiles the configured uplink routes: ordered topic-filter
// matching (first match wins), key templates, priorities and budgets. It does
// no I/O.
package rules

import (
	"strings"

	"github.com/edgegw/gateway/config"
)

// Route is a compiled route.
type Route struct {
	config.Route
	filter []string
	key    config.Template
}

// Set is an ordered, immutable set of routes; a reload builds a new Set.
type Set struct {
	routes   []*Route
	byName   map[string]*Route
	Unrouted string // reject | local
}

// Compile builds a Set from a validated config.
func Compile(cfg *config.Config) *Set {
	s := &Set{byName: map[string]*Route{}, Unrouted: cfg.Unrouted}
	for _, r := range cfg.Routes {
		cr := &Route{Route: r, filter: strings.Split(r.Match, "/"), key: config.MustTemplate(r.Key)}
		s.routes = append(s.routes, cr)
		s.byName[r.Name] = cr
	}
	return s
}

// Match returns the first route whose filter matches the topic, or nil.
func (s *Set) Match(topic string) *Route {
	for _, r := range s.routes {
		if MatchFilter(r.filter, topic) {
			return r
		}
	}
	return nil
}

// Routes returns the routes in config order.
func (s *Set) Routes() []*Route { return s.routes }

// ByName returns the route with that name, or nil.
func (s *Set) ByName(name string) *Route { return s.byName[name] }

// ConfirmRoute is the internal buffer route of receipt delivery
// confirmations (receipts.confirm_topic). It is no configured route; it
// drains first, with priority 0, so a parent's proof of delivery does not
// wait behind telemetry.
const ConfirmRoute = "_receipts_confirm"

// OrphanPriority is the drain priority of a route that is no longer
// configured (its backlog outlived a reload): before all others. Its
// messages are older than anything a renamed route now stores, and one
// client's messages must reach Kafka in publish order across the rename.
const OrphanPriority = -1

// Priority is the drain priority of a route by name (OrphanPriority for one
// no longer configured).
func (s *Set) Priority(name string) int {
	if name == ConfirmRoute {
		return 0
	}
	if r := s.byName[name]; r != nil {
		return r.Priority
	}
	return OrphanPriority
}

// Key renders the route's Kafka key for one publish.
func (r *Route) Key(clientID, username, topic string) []byte {
	return []byte(r.key.Render(config.TemplateInput{ClientID: clientID, Username: username, Topic: topic}))
}

// MatchFilter reports whether topic matches the filter given as its levels.
// Per MQTT, a filter starting with a wildcard does not match topics that
// start with "$".
func MatchFilter(filter []string, topic string) bool {
	if len(topic) > 0 && topic[0] == '$' && len(filter) > 0 && (filter[0] == "+" || filter[0] == "#") {
		return false
	}
	for i, f := range filter {
		if f == "#" {
			return true
		}
		var level string
		j := strings.IndexByte(topic, '/')
		if j < 0 {
			level, topic = topic, ""
			if i != len(filter)-1 {
				// topic ran out; only a trailing "#" (parent match) remains valid
				return i+2 == len(filter) && filter[i+1] == "#" && (f == "+" || f == level)
			}
		} else {
			level, topic = topic[:j], topic[j+1:]
			if i == len(filter)-1 {
				return false
			}
		}
		if f != "+" && f != level {
			return false
		}
	}
	return true
}

// MatchString is MatchFilter for a filter given as a string.
func MatchString(filter, topic string) bool {
	return MatchFilter(strings.Split(filter, "/"), topic)
}
