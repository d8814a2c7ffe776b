// Command mkdeb builds the gateway's Debian package for one architecture from
// a built binary, with nfpm used as a library (no packaging tools needed, only
// Go). `make deb` runs it for amd64, arm64 and armhf; the package test in
// deploy/debian runs it too.
//
//	go run . -root ../.. -bin ../../dist/gateway-linux-amd64 -arch amd64 -version 0.3.0 -out ../../dist
//
// It is its own module (scripts/mkdeb/go.mod) so that nfpm and what it pulls
// in stay out of the gateway's go.mod.
package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
)

const (
	maintainer  = "Edge gateway maintainers <gateway@edgegw.invalid>"
	homepage    = "https://github.com/edgegw/gateway"
	description = `MQTT to Kafka store-and-forward gateway for edge boxes
 Terminals publish over MQTT (3.1.1 and 5, QoS 1) to the broker embedded in
 the gateway. Every message is written to a disk buffer and fsync'd before it
 is acknowledged, and drained to a central Kafka cluster whenever the link
 allows; replies from Kafka are delivered back to each terminal. Built for
 slow, expensive or intermittent links, power cuts and flash storage.`
)

// Debian architecture names for the ones we build.
var archs = map[string]bool{"amd64": true, "arm64": true, "armhf": true}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
}

func run() error {
	root := flag.String("root", "../..", "the repository's root")
	bin := flag.String("bin", "", "the gateway binary for -arch (static, CGO_ENABLED=0)")
	arch := flag.String("arch", "", "Debian architecture: amd64 | arm64 | armhf")
	version := flag.String("version", "", "package version (from make: git describe --tags, else the VERSION file)")
	out := flag.String("out", "dist", "output directory")
	conffile := flag.String("config", "", "file installed as /etc/gateway/config.yaml (default: ROOT/config.example.yaml)")
	flag.Parse()
	if *bin == "" || !archs[*arch] || *version == "" || flag.NArg() > 0 {
		flag.Usage()
		return errors.New("-bin, -arch (amd64 | arm64 | armhf) and -version are required")
	}
	if *conffile == "" {
		*conffile = filepath.Join(*root, "config.example.yaml")
	}
	v, err := debVersion(*version)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "mkdeb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	changelog := filepath.Join(work, "changelog.gz")
	if err := writeChangelog(changelog, v); err != nil {
		return err
	}
	deb := func(p string) string { return filepath.Join(*root, "deploy", "debian", p) }
	// gateway(1), generated from `gateway help` (cmd/gateway/manpage.go)
	manPage := filepath.Join(work, "gateway.1.gz")
	if page, err := os.ReadFile(deb("gateway.1")); err != nil {
		return err
	} else if err := writeGzip(manPage, page); err != nil {
		return err
	}
	mode := func(m os.FileMode) *files.ContentFileInfo {
		return &files.ContentFileInfo{Owner: "root", Group: "root", Mode: m}
	}

	info := &nfpm.Info{
		Name:          "gateway",
		Arch:          *arch,
		Platform:      "linux",
		Version:       v,
		VersionSchema: "none", // already a Debian version (debVersion)
		Section:       "net",
		Priority:      "optional",
		Maintainer:    maintainer,
		Description:   description,
		Homepage:      homepage,
		License:       "Apache-2.0",
		Overridables: nfpm.Overridables{
			Contents: files.Contents{
				{Source: *bin, Destination: "/usr/bin/gateway", FileInfo: mode(0o755)},
				{Source: deb("gateway.service"), Destination: "/usr/lib/systemd/system/gateway.service", FileInfo: mode(0o644)},
				// Kept across upgrades when the operator changed it (dpkg asks,
				// or keeps it with --force-confold). postinst makes it 0640
				// root:gateway once the user exists (the shipped one holds
				// no secret; the operator's may).
				{Source: *conffile, Destination: "/etc/gateway/config.yaml", Type: files.TypeConfigNoReplace, FileInfo: mode(0o644)},
				// The unit's environment (GATEWAY_DATA_DIR, secrets), read by
				// the gateway's commands too; 0640 root:gateway by postinst.
				{Source: deb("gateway.default"), Destination: "/etc/default/gateway", Type: files.TypeConfigNoReplace, FileInfo: mode(0o644)},
				{Source: manPage, Destination: "/usr/share/man/man1/gateway.1.gz", FileInfo: mode(0o644)},
				{Source: deb("lintian/gateway"), Destination: "/usr/share/lintian/overrides/gateway", FileInfo: mode(0o644)},
				{Source: deb("copyright"), Destination: "/usr/share/doc/gateway/copyright", FileInfo: mode(0o644)},
				{Source: changelog, Destination: "/usr/share/doc/gateway/changelog.gz", FileInfo: mode(0o644)},
				{Source: filepath.Join(*root, "README.md"), Destination: "/usr/share/doc/gateway/README.md", FileInfo: mode(0o644)},
				{Source: filepath.Join(*root, "CHANGELOG.md"), Destination: "/usr/share/doc/gateway/CHANGELOG.md", FileInfo: mode(0o644)},
				{Source: filepath.Join(*root, "docs", "*.md"), Destination: "/usr/share/doc/gateway/docs/", FileInfo: mode(0o644)},
				{Source: filepath.Join(*root, "deploy", "grafana", "gateway.json"), Destination: "/usr/share/doc/gateway/examples/grafana-dashboard.json", FileInfo: mode(0o644)},
			},
			Scripts: nfpm.Scripts{
				PostInstall: deb("postinst"),
				PreRemove:   deb("prerm"),
				PostRemove:  deb("postrm"),
			},
			Deb: nfpm.Deb{Compression: "xz"},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return err
	}
	// Documentation is data: no file under /usr/share/doc is executable.
	for _, c := range info.Contents {
		if strings.HasPrefix(c.Destination, "/usr/share/doc/") && c.Type == files.TypeFile && c.FileInfo != nil {
			c.FileInfo.Mode = 0o644
			c.FileInfo.Owner, c.FileInfo.Group = "root", "root"
		}
	}
	pkg, err := nfpm.Get("deb")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	target := filepath.Join(*out, pkg.ConventionalFileName(info))
	f, err := os.Create(target)
	if err != nil {
		return err
	}
	info.Target = target
	if err := pkg.Package(info, f); err != nil {
		f.Close()
		os.Remove(target)
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Println(target)
	return nil
}

var debVersionRe = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)

// debVersion turns what `git describe --tags` gives (0.3.0, 0.3.0-5-gabc1234,
// 0.3.0-dirty) into a Debian version that sorts after the release it builds
// on: 0.3.0, 0.3.0+5.gabc1234, 0.3.0+dirty. Without a Debian revision a "-"
// may not appear.
func debVersion(v string) (string, error) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	if i := strings.IndexByte(v, '-'); i >= 0 {
		v = v[:i] + "+" + strings.ReplaceAll(v[i+1:], "-", ".")
	}
	if !debVersionRe.MatchString(v) {
		return "", fmt.Errorf("version %q cannot be a Debian version", v)
	}
	return v, nil
}

// writeChangelog writes the Debian changelog of a native package (one entry
// per build; the release notes are CHANGELOG.md beside it), gzip'd without a
// timestamp so the package is reproducible.
func writeChangelog(path, version string) error {
	date := time.Now().UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var sec int64
		if _, err := fmt.Sscan(s, &sec); err == nil {
			date = time.Unix(sec, 0).UTC()
		}
	}
	text := fmt.Sprintf("gateway (%s) stable; urgency=medium\n\n  * Release %s. What changed: /usr/share/doc/gateway/CHANGELOG.md.\n\n -- %s  %s\n",
		version, version, maintainer, date.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	return writeGzip(path, []byte(text))
}

// writeGzip writes data gzip'd at the best compression without a name or
// timestamp (gzip -9n), so the package is reproducible.
func writeGzip(path string, data []byte) error {
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}
