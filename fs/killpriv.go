package fs

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The daemon takes over the kernel's duty of removing privileges from a
// file that is written or truncated (FUSE_HANDLE_KILLPRIV_V2): the kernel
// would otherwise ask for security.capability before every write, one round
// trip each. The rule is the kernel's (file_remove_privs): a write removes
// security.capability; it clears setuid, and setgid when the file is group
// executable or the writer is not in its group, unless the writer may keep
// them (CAP_FSETID; here: root).

// killPriv removes the privileges of the regular file open as fd before the
// caller of ctx changes its data. Node.noPrivs remembers a file that has
// none, so a file is checked once, not at every write.
func (n *Node) killPriv(ctx context.Context, fd int) error {
	if n.noPrivs.Load() {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil
	}
	clean := true
	if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
		c, ok := fuse.FromContext(ctx)
		if !ok || c.Uid == 0 {
			clean = false // root keeps them; another writer may not
		} else {
			mode := st.Mode & 0o7777 &^ unix.S_ISUID
			if st.Mode&unix.S_IXGRP != 0 || !inGroup(c, st.Gid) {
				mode &^= unix.S_ISGID
			}
			if err := unix.Fchmod(fd, mode); err != nil {
				return err
			}
			clean = mode&unix.S_ISGID == 0
		}
	}
	// Look first: removing it needs privilege even when it is absent, which
	// a daemon without root lacks (its upper cannot hold one anyway).
	_, err := unix.Fgetxattr(fd, "security.capability", nil)
	if err == nil {
		err = unix.Fremovexattr(fd, "security.capability")
	}
	if err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.ENOTSUP) {
		return err
	}
	n.noPrivs.Store(clean)
	return nil
}

// inGroup reports whether the caller c is in the group gid, by its primary
// group or, from /proc, its supplementary ones.
func inGroup(c *fuse.Caller, gid uint32) bool {
	if c.Gid == gid {
		return true
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(int(c.Pid)) + "/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			for _, g := range strings.Fields(rest) {
				if g == strconv.Itoa(int(gid)) {
					return true
				}
			}
		}
	}
	return false
}
