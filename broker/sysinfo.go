package broker

import (
	"context"
	"errors"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
)

// SetOpts gives mochi's bbolt hook a logger without one false alarm: on a
// session store that has never been written, mochi v2.7.9 reads its system
// info key ("SYS"), finds nothing, logs `level=ERROR msg="failed to get data"
// error="key not found" key=SYS` inside getKv, and then (in StoredSysInfo)
// treats the missing key as the normal empty result. Every first start showed
// that ERROR. Only that exact record is dropped; any other error of the hook,
// including a failed read of SYS, is logged as before.
// TestFirstStartLogsNoError pins this: it fails if mochi changes the message.
func (s *sessionStore) SetOpts(l *slog.Logger, o *mqtt.HookOptions) {
	if l != nil {
		l = slog.New(&dropMissingSysInfo{l.Handler()})
	}
	s.Hook.SetOpts(l, o)
}

// dropMissingSysInfo is a slog.Handler that drops mochi's "failed to get
// data" record for a missing SYS key and passes everything else on.
type dropMissingSysInfo struct{ slog.Handler }

func (d *dropMissingSysInfo) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelError && r.Message == "failed to get data" {
		var sysKey, notFound bool
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "key":
				sysKey = a.Value.String() == storage.SysInfoKey
			case "error":
				err, ok := a.Value.Any().(error)
				notFound = ok && errors.Is(err, bolt.ErrKeyNotFound)
			}
			return true
		})
		if sysKey && notFound {
			return nil
		}
	}
	return d.Handler.Handle(ctx, r)
}

func (d *dropMissingSysInfo) WithAttrs(as []slog.Attr) slog.Handler {
	return &dropMissingSysInfo{d.Handler.WithAttrs(as)}
}

func (d *dropMissingSysInfo) WithGroup(name string) slog.Handler {
	return &dropMissingSysInfo{d.Handler.WithGroup(name)}
}
