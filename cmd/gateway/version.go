package main

import release "github.com/edgegw/gateway"

// A build without -ldflags (go build, go run, the e2e tests) still reports
// the release it is made from.
func init() {
	if version == "" {
		version = release.Version
	}
}
