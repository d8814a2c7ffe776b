package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/fleet"
)

// explainFleet is the fleet part of `gateway check`: with fleet.config_topic
// set, it reads the overlays applied on this box (data_dir, read only),
// verifies them with fleet.config_keys, and says what they change against
// the file and whether the file with them validates. It returns exitUsage
// for broken key files (the box would not start), else exitOK: a box whose
// overlay does not fit its file runs the file alone.
func explainFleet(cfg *config.Config, path string, environ []string, w io.Writer) int {
	if cfg.Fleet.ConfigTopic == "" {
		return exitOK
	}
	keys, err := fleet.LoadPublicKeys(cfg.Fleet.ConfigKeys)
	if err != nil {
		fmt.Fprintln(w, err)
		return exitUsage
	}
	stored, err := fleet.LoadStore(cfg.DataDir)
	if err != nil {
		fmt.Fprintf(w, "fleet: %v (the gateway runs the file alone until it reads %s again)\n", err, cfg.Fleet.ConfigTopic)
		return exitOK
	}
	ok, refused := fleet.VerifyStored(stored, keys, cfg.ID)
	for _, r := range refused {
		fmt.Fprintf(w, "fleet: overlay %q version %d is not applied: %s\n", r.Key, r.Version, fleet.Printable(r.Detail))
	}
	if len(ok) == 0 {
		fmt.Fprintf(w, "fleet: no overlay from %s is applied on this box (%s): the file runs as it is\n", cfg.Fleet.ConfigTopic, cfg.DataDir)
		return exitOK
	}
	for _, k := range []string{fleet.AllBoxes, cfg.ID} {
		if o := ok[k]; o != nil {
			fmt.Fprintf(w, "fleet: overlay %q version %d, signed by key %s, accepted %s (%s offset %d)\n",
				k, o.Version, o.KeyID, o.Accepted.Format("2006-01-02T15:04:05Z07:00"), cfg.Fleet.ConfigTopic, o.Offset)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(w, err)
		return exitUsage
	}
	eff, err := config.ParseLayers(data, fleet.Layers(ok, cfg.ID), environ)
	if err != nil {
		fmt.Fprintln(w, "fleet: the file with the applied overlay does not validate, so the gateway runs the file alone:")
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(w, "  "+line)
		}
		return exitOK
	}
	changes := config.Diff(cfg, eff)
	for _, c := range changes {
		fmt.Fprintln(w, "fleet: "+c.String())
	}
	fmt.Fprintf(w, "fleet: ok: the file with the overlay validates; it changes %d keys of the file\n", len(changes))
	return exitOK
}
