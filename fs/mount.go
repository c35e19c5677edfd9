package fs

import (
	"errors"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/unionmount/unionmount/cow"
)

// Mount serves the merged view of st at mountpoint. mo carries the
// lifecycle options (allow_other, fsname, debug); Mount adds the caching
// policy and returns once the kernel has the mount.
func Mount(mountpoint string, st *cow.Stack, mo fuse.MountOptions) (*fuse.Server, error) {
	return nil, errors.New("not yet")
}
