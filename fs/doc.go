// Package fs serves a cow.Stack through FUSE with go-fuse's fs API.
//
// Each merged object is one Node (one FUSE inode) for its whole life: a
// copy-up changes which layer serves it, not the inode, so descriptors
// opened before a copy-up see the data written after it. The node methods
// are thin: they find the object's path, call cow, and convert the error
// to an errno once, in errno.go.
//
// Implemented: lookup, getattr/setattr, readlink, open/create/O_TMPFILE,
// read/write/fsync/fallocate/lseek/copy_file_range, mkdir/mknod/symlink/
// link, unlink/rmdir, rename (RENAME_NOREPLACE, RENAME_EXCHANGE), xattrs,
// statfs, and directory handles with stable offsets. Locks are the
// kernel's own (no lock requests).
//
// # Metadata-only copies
//
// A node whose object is a metadata-only copy (cow/metacopy.go) has its
// metadata in the upper and its data below: a handle opened on it reads the
// data below, read-only, and takes its attributes from the upper (stat by
// path, not fstat of the descriptor). A write, truncate, fallocate or
// copy_file_range into it copies the data up first (handle.writable), after
// which every handle of the node moves to the upper copy, as after any
// copy-up.
//
// # Kernel caching
//
// The daemon is the only writer of the upper and the lowers do not change
// while mounted, so every change the merged view shows is made through the
// mount, and the kernel updates its own caches as it makes it. Names,
// attributes and failed lookups are cached for Cache.Timeout, directory
// listings (FOPEN_CACHE_DIR) and file pages (FOPEN_KEEP_CACHE) across
// opens; closes send no FLUSH. A read-only handle on a lower file opens
// the file at its first read, which a warm read never makes (file.go).
// The kernel opens directories without asking the daemon (opendir.go),
// and files too where it checks permissions itself (a read-only union, or
// default_permissions, as root by default): a lower file is then copied
// up at its first write, and a file unlinked while open keeps a
// descriptor in the daemon until the kernel forgets it (noopen.go).
// The daemon removes privileges on write itself (HANDLE_KILLPRIV_V2,
// killpriv.go). Where the daemon changes what the kernel cannot see (a
// directory rename copying up a tree, an unlink that re-indexes a hard
// link), it marks its own nodes stale; the merged view the kernel caches
// does not change there.
//
// Requests are large: writes of up to 1 MiB travel in one WRITE, and, as
// root, the mount reads ahead up to 1 MiB (its backing device's
// read_ahead_kb), where FUSE's defaults are 128 KiB.
//
// # Serving /dev/fuse
//
// go-fuse's protocol server (fuse.ProtocolServer) decodes the requests and
// calls its node bridge, which calls the nodes; the daemon's own transport
// (transport.go) reads the requests from /dev/fuse and writes the replies.
// One goroutine reads at a time and serves what it read, as a
// single-threaded libfuse daemon does, so a program's requests in sequence
// cost one wake-up each, not two; a watchdog adds a reader while a slow
// request (a big copy-up, an fsync) keeps the only one busy. devfuse.go
// mounts and unmounts.
//
// # Passthrough
//
// With -o passthrough=on, as root, a file whose data is in the upper is
// opened through FUSE passthrough: the kernel reads and writes the upper
// file itself. (The kernel cannot both open files itself and pass them
// through, so passthrough is off where it opens them.) Lower
// files never are: go-fuse binds one backing file per inode, so a lower
// file opened read-only and then for writing would send the writes into
// the lower layer, and a backing file cannot follow a copy-up. The rules
// that keep the kernel's, go-fuse's and the union's views of a node
// consistent, and what they mean for privileges and commit, are in
// passthrough.go.
package fs
