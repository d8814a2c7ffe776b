// Package gateway holds what belongs to the repository as a whole: the
// release version from the VERSION file. The program is cmd/gateway.
package gateway

import (
	_ "embed"
	"strings"
)

//go:embed VERSION
var versionFile string

// Version is the release in the VERSION file (semantic versioning, no
// leading "v"): what `gateway version` prints when the build did not set a
// version from `git describe --tags` (a plain `go build`).
var Version = strings.TrimSpace(versionFile)
