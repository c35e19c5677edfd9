package fs

import (
	"fmt"
	"slices"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/cow"
)

// Mount serves the merged view of st at mountpoint. mo carries the
// lifecycle options (allow_other, fsname, debug); Mount adds the caching
// policy and returns once the kernel has the mount.
func Mount(mountpoint string, st *cow.Stack, mo fuse.MountOptions) (*fuse.Server, error) {
	root, err := st.Root()
	if err != nil {
		return nil, fmt.Errorf("root directory: %w", err)
	}
	// Modes of new objects arrive with the caller's umask applied; the
	// daemon's own must not apply a second time.
	unix.Umask(0)
	// With default_permissions the kernel checks permissions; with ACL
	// support it checks POSIX ACLs too, as ext4 does, reading them
	// through getxattr.
	if slices.Contains(mo.Options, "default_permissions") {
		mo.EnableAcl = true
	}
	timeout := time.Second
	opts := &fusefs.Options{
		MountOptions:    mo,
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true,
		RootStableAttr:  &fusefs.StableAttr{Mode: unix.S_IFDIR, Ino: root.Ino},
	}
	rootNode := &Node{st: st, reg: &nodes{m: map[uint64]*Node{}}, obj: root, tmpfd: -1}
	return fusefs.Mount(mountpoint, rootNode, opts)
}
