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
// kernel's own (no lock requests). FUSE passthrough is never used: go-fuse
// binds one backing file per inode, so a lower file opened read-only and
// then for writing would send the writes into the lower layer.
package fs
