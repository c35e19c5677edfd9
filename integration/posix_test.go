package integration

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// posixWrongEverywhere are posixtest tests whose expectation no local
// filesystem meets, with the reason.
var posixWrongEverywhere = map[string]string{
	// It wants a second open by the same process to be refused a lock
	// that conflicts with the first; POSIX record locks belong to the
	// process, so ext4 and kernel overlayfs grant it (the test fails the
	// same way on a plain ext4 directory).
	"FcntlFlockLocksFile": "POSIX locks are per process; fails on ext4 too",
}

// TestPosix runs go-fuse's POSIX conformance tests through a union mount,
// each once in a directory that exists only in the upper and once in a
// directory that exists only in a lower layer, so every file they touch
// there is copied up or whited out.
func TestPosix(t *testing.T) {
	needFUSE(t)
	base := t.TempDir()
	lower, upper, mnt := filepath.Join(base, "lower"), filepath.Join(base, "upper"), filepath.Join(base, "merged")
	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, d := range []string{lower, upper, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range names {
		if err := os.Mkdir(filepath.Join(lower, "lower-"+name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mountUnion(t, lower, upper, mnt)
	for _, place := range []string{"upper", "lower"} {
		t.Run(place, func(t *testing.T) {
			for _, name := range names {
				t.Run(name, func(t *testing.T) {
					if why, ok := posixWrongEverywhere[name]; ok {
						t.Skip(why)
					}
					dir := filepath.Join(mnt, place+"-"+name)
					if place == "upper" {
						if err := os.Mkdir(dir, 0o755); err != nil {
							t.Fatal(err)
						}
					}
					posixtest.All[name](t, dir)
				})
			}
		})
	}
}
