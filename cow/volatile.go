package cow

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// A volatile stack never calls fsync: not for a copy-up, nor for a user's
// fsync. A crash can then leave the upper with copies whose data never
// reached the disk, so, as the kernel does for its "volatile" option
// (overlayfs.rst, "Volatile mount"), the stack leaves a marker in the work
// directory while it is open and refuses to open an upper whose marker a
// crash left: the upper should be thrown away. A clean close writes the
// upper's filesystem out (syncfs) and removes the marker.
//
// The marker is WORK/volatile; the kernel's own, WORK/work/incompat/volatile,
// is honoured too.

const volatileMarker = "volatile"

// kernelVolatileMarker is the kernel's marker, relative to the workdir.
var kernelVolatileMarker = filepath.Join("work", "incompat", "volatile")

// checkVolatile refuses a workdir that a volatile mount did not close
// cleanly.
func checkVolatile(work string) error {
	for _, m := range []string{volatileMarker, kernelVolatileMarker} {
		p := filepath.Join(work, m)
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s: a volatile mount of this upper did not end cleanly, so its files may be incomplete; "+
				"throw the upper away, or remove %s to use it anyway: %w", work, p, unix.EUCLEAN)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("check %s: %w", p, err)
		}
	}
	return nil
}

// markVolatile writes the marker, durably.
func markVolatile(work string) error {
	p := filepath.Join(work, volatileMarker)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		return fmt.Errorf("volatile marker: %w", err)
	}
	return syncDir(work)
}

// unmarkVolatile writes out the filesystem of the upper (and of work,
// the same one), then removes the marker.
func unmarkVolatile(work string) error {
	fd, err := unix.Open(work, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.Syncfs(fd)
		unix.Close(fd)
	}
	if err != nil {
		return fmt.Errorf("sync the upper of a volatile mount: %w", err)
	}
	if err := os.Remove(filepath.Join(work, volatileMarker)); err != nil {
		return fmt.Errorf("volatile marker: %w", err)
	}
	return syncDir(work)
}

// Volatile reports whether the stack skips fsync.
func (s *Stack) Volatile() bool { return s.cfg.Volatile }
