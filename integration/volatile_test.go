package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestVolatile: -o volatile skips fsync but keeps the data of a clean
// unmount, and an upper whose volatile mount crashed is refused with a
// clear message, as kernel overlayfs refuses it.
func TestVolatile(t *testing.T) {
	needRoot(t) // killDaemon aborts the FUSE connection through fusectl
	l := newLab(t)
	marker := filepath.Join(l.work, "volatile")

	mountUnion(t, "-o", "volatile", l.lowers(), l.upper, l.merged)
	if _, err := os.Lstat(marker); err != nil {
		t.Errorf("no volatile marker while mounted: %v", err)
	}
	f, err := os.Create(filepath.Join(l.merged, "kept"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("data")
	if err := f.Sync(); err != nil {
		t.Errorf("fsync on a volatile mount: %v", err)
	}
	f.Close()
	unmount(t, l.merged)
	// The daemon syncs and drops the marker as it exits, just after the
	// unmount.
	for i := 0; ; i++ {
		if _, err := os.Lstat(marker); os.IsNotExist(err) {
			break
		}
		if i == 500 {
			t.Fatal("volatile marker left 5 s after a clean unmount")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if data, err := os.ReadFile(filepath.Join(l.upper, "kept")); err != nil || string(data) != "data" {
		t.Errorf("upper after a clean volatile unmount: %q, %v", data, err)
	}

	// A crash: the daemon is killed while mounted.
	cmd := startForeground(t, "-o", "volatile", l.lowers(), l.upper, l.merged)
	done := make(chan struct{})
	close(done)
	killDaemon(t, cmd, l.merged, done)
	out, err := run(l.lowers(), l.upper, l.merged)
	if err == nil {
		unmount(t, l.merged)
		t.Fatal("an upper whose volatile mount crashed was mounted again")
	}
	if !strings.Contains(out, "volatile mount of this upper did not end cleanly") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("error for a crashed volatile upper: %q, want one line saying so", out)
	}
	if err := os.Remove(marker); err != nil {
		t.Fatal(err)
	}
	mountUnion(t, l.lowers(), l.upper, l.merged)
	if data, err := os.ReadFile(filepath.Join(l.merged, "kept")); err != nil || string(data) != "data" {
		t.Errorf("after removing the marker: kept = %q, %v", data, err)
	}
}
