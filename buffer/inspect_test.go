package buffer

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// inspectFixture is a closed buffer with records in the bbolt file and in
// the journal.
func inspectFixture(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := b.AppendWait(Record{Route: "payments", KafkaTopic: "payments", Received: time.Now(), ClientID: "t1",
			Key: []byte("t1"), MQTTTopic: "terminals/t1/payments", Payload: []byte("p")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func digest(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		fi, err := os.Lstat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		sum := fi.Mode().String() + " " + fi.ModTime().String()
		if fi.Mode().IsRegular() {
			data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			sum += " " + string(sha256.New().Sum(data))
		}
		out[e.Name()] = sum
	}
	return out
}

// A read-only look changes nothing in the data dir.
func TestOpenReadOnlyWritesNothing(t *testing.T) {
	path := inspectFixture(t)
	before := digest(t, filepath.Dir(path))
	b, err := OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	if r := b.Inspect(); len(r.Routes) != 1 || r.Routes[0].Messages != 5 {
		t.Fatalf("inspect: %+v", r)
	}
	if _, err := b.DeadLetters(0); err != nil {
		t.Fatal(err)
	}
	b.Close()
	after := digest(t, filepath.Dir(path))
	if len(before) != len(after) {
		t.Fatalf("files before %v, after %v", before, after)
	}
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s changed", k)
		}
	}
}

// A data dir the service user can write is not trusted by a root operator's
// read-only look: links are refused (never followed, never written
// through), special files are refused without being read, and a journal
// larger than any a gateway writes is refused before it is read.
func TestOpenReadOnlyTrustsNothingInTheDataDir(t *testing.T) {
	victimDir := t.TempDir()
	victim := filepath.Join(victimDir, "precious")
	content := []byte("an operator's file the link points at\n")
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, path string)
		want  string
	}{
		{"journal linked to another file", func(t *testing.T, path string) {
			os.Remove(path + ".journal-0")
			if err := os.Symlink(victim, path+".journal-0"); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"journal linked to /dev/zero", func(t *testing.T, path string) {
			os.Remove(path + ".journal-1")
			if err := os.Symlink("/dev/zero", path+".journal-1"); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"journal is a FIFO", func(t *testing.T, path string) {
			os.Remove(path + ".journal-0")
			if err := syscall.Mkfifo(path+".journal-0", 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"journal is huge (sparse)", func(t *testing.T, path string) {
			if err := os.Truncate(path+".journal-0", maxInspectJournal+4096); err != nil {
				t.Fatal(err)
			}
		}, "larger than"},
		{"buffer.db linked to another file", func(t *testing.T, path string) {
			os.Rename(path, path+".real")
			if err := os.Symlink(path+".real", path); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"buffer.db is a FIFO", func(t *testing.T, path string) {
			os.Remove(path)
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(victim, content, 0o600); err != nil {
				t.Fatal(err)
			}
			path := inspectFixture(t)
			tc.plant(t, path)
			done := make(chan error, 1)
			go func() {
				b, err := OpenReadOnly(path)
				if err == nil {
					b.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want an error with %q", err, tc.want)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("OpenReadOnly blocked")
			}
			if got, _ := os.ReadFile(victim); !bytes.Equal(got, content) {
				t.Fatalf("the file behind the link changed: %q", got)
			}
			if _, err := JournalEpoch(path); tc.name != "journal is huge (sparse)" && strings.HasPrefix(tc.name, "journal") && err == nil {
				t.Errorf("JournalEpoch read a planted journal")
			}
		})
	}
}
