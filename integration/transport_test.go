package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestSlowRequestLeavesTheMountServed copies up a big lower file, a request
// that takes a while (the copy and its fsync), and meanwhile looks up 200
// names no one has looked up yet. The daemon serves requests on the one
// goroutine that read them; a watchdog must start another reader so that
// the lookups do not wait for the copy-up (fs/transport.go).
func TestSlowRequestLeavesTheMountServed(t *testing.T) {
	root := t.TempDir()
	lower, upper, mnt := filepath.Join(root, "lower"), filepath.Join(root, "upper"), filepath.Join(root, "merged")
	for _, d := range []string{filepath.Join(lower, "names"), upper, mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 200 {
		if err := os.WriteFile(filepath.Join(lower, "names", fmt.Sprint(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// 128 MiB of data written, not a hole: the copy-up copies it all.
	big, err := os.Create(filepath.Join(lower, "big"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("unionmount "), 1<<20/11+1)[:1<<20]
	for range 128 {
		if _, err := big.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := big.Close(); err != nil {
		t.Fatal(err)
	}
	mountUnion(t, lower, upper, mnt)
	work := filepath.Join(root, ".upper.work")
	if _, err := os.Stat(work); err != nil {
		t.Fatalf("the work directory is not where this test looks: %v", err)
	}

	var copied atomic.Bool
	done := make(chan error, 1)
	go func() {
		// The first write copies the file up.
		f, err := os.OpenFile(filepath.Join(mnt, "big"), os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteAt([]byte("u"), 0)
			err = errors.Join(err, f.Close())
		}
		copied.Store(true)
		done <- err
	}()
	// The copy-up has begun once its copy appears in the work directory.
	deadline := time.Now().Add(30 * time.Second)
	for !copying(work) {
		if copied.Load() || time.Now().After(deadline) {
			t.Fatal("the copy-up of a 128 MiB file never showed in the work directory")
		}
		time.Sleep(time.Millisecond)
	}
	for i := range 200 {
		if _, err := os.Stat(filepath.Join(mnt, "names", fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if copied.Load() {
		t.Error("200 lookups were served only after the copy-up finished: the slow request held the only reader")
	}
	if err := <-done; err != nil {
		t.Fatalf("write (copy-up): %v", err)
	}
}

// copying reports whether the work directory holds a copy-up's copy with
// data in it.
func copying(work string) bool {
	found := false
	_ = filepath.WalkDir(work, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && strings.HasPrefix(d.Name(), "#") {
			if info, err := d.Info(); err == nil && info.Size() > 0 {
				found = true
			}
		}
		return nil
	})
	return found
}
