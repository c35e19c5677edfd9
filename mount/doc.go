// Package mount turns a command line into a live union mount and keeps it
// alive: it parses the arguments, validates every directory before anything
// is written, opens the cow stack, mounts it through package fs and serves
// it until the mount point is unmounted.
//
// # Arguments
//
// Two syntaxes describe the same Options. The short form is the one the
// unionmount-testsuite expects:
//
//	unionmount LOWER[:LOWER...] [UPPER] MERGED
//
// The mount(8) form is fuse-overlayfs's, and it is the form mount.fuse3
// uses when it runs us for "mount -t fuse.unionmount" or an fstab line:
//
//	unionmount [SOURCE] MERGED -o lowerdir=L1:L2,upperdir=U,workdir=W
//
// Lowers are listed top-most first and separated by ':'; "\:" is a colon
// inside a name and "\\" a backslash, as in kernel overlayfs. Without an
// upper the union is read-only. Generic mount(8) options (rw, nodev,
// noatime, ...) are accepted and ignored, so fstab lines work unchanged.
//
// # Validation
//
// Validate resolves every path (filepath.Abs, then EvalSymlinks) and
// refuses, before anything is created: missing or non-directory paths, a
// path given twice, any two of upper, workdir and mount point nested in one
// another or in a lower, a workdir on another filesystem than the upper,
// more than 500 lowers (the kernel's OVL_MAX_STACK) and a mount point that
// already holds a unionmount mount. A lower may not contain the mount
// point either: the daemon would look up paths through its own mount.
//
// The workdir may be left out; it then defaults to the hidden sibling
// DIR/.NAME.work of the upper DIR/NAME and is created on mount.
//
// # Lifecycle
//
// Run is the whole life of a mount command. In the foreground it mounts,
// serves, and on SIGINT or SIGTERM unmounts (lazily if the mount is busy)
// and returns. Otherwise it re-executes the same command line as a daemon
// in a new session with stdin, stdout and stderr on /dev/null, and returns
// only once the daemon reported over a pipe that the mount is live, or
// with the daemon's error. The daemon exits by itself once the mount point
// is unmounted, by umount(8), fusermount3 -u or Unmount.
//
// # Control socket
//
// A live mount answers the commands that need its daemon on a unix socket,
// RUNTIME/MAJ:MIN.sock, named after the mount's device number, in a
// directory only its user can enter (control.go): "info" (its layers),
// "commit" (fs.Server.Commit, which freezes the upper while the mount
// runs) and "which". CommitMount, MountInfo, ListLayers and Which are the
// client side; CommitUpper commits an upper that is not mounted.
//
// # Images
//
// With Options.Image the lowers are an image's layers, unpacked in an
// image store (package store), and without an upper the mount gets a fresh
// container layer in the store (image.go). CommitImage commits such a
// mount, or one of plain directories, and stores it as an image.
package mount
