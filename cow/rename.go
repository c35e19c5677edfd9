package cow

import (
	"errors"

	"golang.org/x/sys/unix"
)

// Rename moves src (name srcName in the merged directory srcDir at
// srcDirRel) to dstName in dstDir at dstDirRel, replacing dst (nil when the
// merged view has no such name). flags are renameat2's RENAME_NOREPLACE and
// RENAME_EXCHANGE. It returns src as it is after the rename.
//
// Unlike the kernel (EXDEV), a directory with lower parts can be renamed:
// its whole merged tree is copied up and made opaque at its new place, and a
// whiteout left at the old one, so the upper stays mountable by the kernel.
func (s *Stack) Rename(srcDir *Object, srcDirRel, srcName string, src *Object,
	dstDir *Object, dstDirRel, dstName string, dst *Object, flags uint) (*Object, error) {
	srcRel, dstRel := join(srcDirRel, srcName), join(dstDirRel, dstName)
	switch {
	case s.upper == nil:
		return nil, &errRO
	case flags&^uint(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0:
		return nil, s.upper.err("rename", srcRel, unix.EINVAL)
	case IsReservedName(dstName):
		return nil, errReserved(dstRel)
	}
	exchange := flags&unix.RENAME_EXCHANGE != 0
	if flags&unix.RENAME_NOREPLACE != 0 && dst != nil {
		return nil, s.upper.err("rename", dstRel, unix.EEXIST)
	}
	if exchange && dst == nil {
		return nil, s.upper.err("rename", dstRel, unix.ENOENT)
	}

	if !exchange && dst != nil && dst.IsDir() {
		// Fail before copying anything up (checked again below).
		if empty, err := s.IsEmpty(dst, dstRel); err != nil || !empty {
			if err == nil {
				err = s.upper.err("rename", dstRel, unix.ENOTEMPTY)
			}
			return nil, err
		}
	}
	// Copy-ups first: they take locks that s.ns must not be held for.
	if !exchange {
		if err := s.copyUpLinked(dst, dstRel); err != nil {
			return nil, err
		}
	}
	src, srcTree, err := s.copyUpForRename(src, srcRel)
	if err != nil {
		return nil, err
	}
	dstTree := false
	if exchange {
		if dst, dstTree, err = s.copyUpForRename(dst, dstRel); err != nil {
			return nil, err
		}
	}
	if err := s.ensureUpperDir(srcDir, srcDirRel); err != nil {
		return nil, err
	}
	if err := s.ensureUpperDir(dstDir, dstDirRel); err != nil {
		return nil, err
	}

	s.ns.Lock()
	defer s.ns.Unlock()
	// A directory moved into a merged directory is made opaque (as the
	// kernel does), and one whose tree was copied up must be.
	if src.IsDir() && (srcTree || isMerged(dstDir)) {
		if err := s.setOpaque(srcRel); err != nil {
			return nil, err
		}
	}
	if srcTree {
		if err := s.dropWhiteouts(srcRel); err != nil {
			return nil, err
		}
	}
	if exchange {
		if dst.IsDir() && (dstTree || isMerged(srcDir)) {
			if err := s.setOpaque(dstRel); err != nil {
				return nil, err
			}
		}
		if dstTree {
			if err := s.dropWhiteouts(dstRel); err != nil {
				return nil, err
			}
		}
		if err := s.renameUpper(srcRel, dstRel, unix.RENAME_EXCHANGE); err != nil {
			return nil, s.upper.err("rename", srcRel, err)
		}
		return s.renamed(src, srcTree), nil
	}

	whiteout, err := s.lowerHas(srcDir, srcDirRel, srcName)
	if err != nil {
		return nil, err
	}
	dstSt, err := s.upper.lstat(dstRel)
	dstInUpper := err == nil
	dstWhiteout := dstInUpper && isWhiteout(&dstSt)
	if dst != nil && dst.IsDir() {
		empty, err := s.IsEmpty(dst, dstRel)
		if err != nil {
			return nil, err
		}
		if !empty {
			return nil, s.upper.err("rename", dstRel, unix.ENOTEMPTY)
		}
		if dstInUpper && !dstWhiteout {
			// Only whiteouts are left in it, and rename(2)
			// replaces empty directories only.
			if err := s.emptyDir(dstRel); err != nil {
				return nil, err
			}
		}
	}
	if dstWhiteout && src.IsDir() {
		// A directory cannot replace a non-directory: exchange, and
		// the whiteout lands where the source was.
		if err := s.renameUpper(srcRel, dstRel, unix.RENAME_EXCHANGE); err != nil {
			return nil, s.upper.err("rename", srcRel, err)
		}
		if !whiteout {
			s.upper.unlink(srcRel)
		}
		return s.renamed(src, srcTree), nil
	}
	var rf uint
	if whiteout {
		rf = unix.RENAME_WHITEOUT
	}
	err = s.renameUpper(srcRel, dstRel, rf)
	if errors.Is(err, unix.EINVAL) && whiteout {
		// No RENAME_WHITEOUT here: rename, then whiteout.
		if err = s.renameUpper(srcRel, dstRel, 0); err == nil {
			err = s.upper.in(srcRel, mkWhiteout)
		}
	}
	if err != nil {
		return nil, s.upper.err("rename", srcRel, err)
	}
	if dst != nil && dst.indexName != "" && !dstInUpper {
		// One lower name of an indexed copy is now hidden.
		if err := s.addLowerLinks(dst.indexName, -1); err != nil {
			return nil, err
		}
	}
	return s.renamed(src, srcTree), nil
}

// isMerged reports whether the directory dir has lower layers.
func isMerged(dir *Object) bool { return len(dir.Lowers) > 0 || !dir.Layer.upper }

func (s *Stack) renamed(o *Object, tree bool) *Object {
	c := *o
	c.memo = nil
	if c.indexName == "" {
		c.Layer = s.upper
	}
	if tree {
		c.Lowers = nil
	}
	return &c
}

// copyUpForRename copies o up; a directory with lower parts is copied up
// with its whole merged tree (tree is then true).
func (s *Stack) copyUpForRename(o *Object, rel string) (c *Object, tree bool, err error) {
	if !o.IsDir() {
		c, err := s.CopyUpMeta(o, rel)
		if err == nil {
			c, err = s.markMoved(c, rel)
		}
		return c, false, err
	}
	if !isMerged(o) {
		return o, false, nil
	}
	c, err = s.CopyUpTree(o, rel)
	return c, true, err
}

// CopyUpTree copies the directory o at rel and everything the merged view
// shows below it into the upper.
func (s *Stack) CopyUpTree(o *Object, rel string) (*Object, error) {
	c, err := s.CopyUp(o, rel, false)
	if err != nil {
		return nil, err
	}
	ents, err := s.readdir(c, rel, unix.O_NOATIME)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		child, err := s.Lookup(c, rel, e.Name)
		if err != nil {
			return nil, err
		}
		crel := join(rel, e.Name)
		if child.IsDir() {
			_, err = s.CopyUpTree(child, crel)
		} else {
			_, err = s.CopyUp(child, crel, true)
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

// dropWhiteouts removes the whiteouts and markers below the upper directory
// rel, whose whole tree was copied up and which is opaque: they hide
// nothing any more, and a kernel mount would list them.
//
// Preconditions: s.ns is held.
func (s *Stack) dropWhiteouts(rel string) error {
	fd, err := s.upper.open(rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var dst unix.Stat_t
	if err := unix.Fstat(fd, &dst); err != nil {
		return err
	}
	// Removing entries moves the directory's times; the rename must not.
	defer unix.UtimesNanoAt(fd, ".", []unix.Timespec{dst.Atim, dst.Mtim}, 0)
	ents, err := direntsOf(fd)
	if err != nil {
		return s.upper.err("readdir", rel, err)
	}
	for _, e := range ents {
		var st unix.Stat_t
		switch {
		case e.typ == unix.DT_DIR:
			err = s.dropWhiteouts(join(rel, e.name))
		case e.typ == unix.DT_CHR:
			if unix.Fstatat(fd, e.name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && isWhiteout(&st) {
				err = unix.Unlinkat(fd, e.name, 0)
			}
		default:
			if _, ok := markerTarget(e.name); ok {
				err = unix.Unlinkat(fd, e.name, 0)
			}
		}
		if err != nil {
			return s.upper.err("drop whiteout", join(rel, e.name), err)
		}
	}
	return nil
}

// emptyDir swaps the upper directory rel, which holds only whiteouts, for an
// empty opaque one with the same attributes, in one step: removing the
// whiteouts one by one would show the lower entries they hide, for good if
// the daemon died meanwhile. (Linux: ovl_clear_empty.)
//
// Preconditions: s.ns is held.
func (s *Stack) emptyDir(rel string) error {
	st, err := s.upper.lstat(rel)
	if err != nil {
		return err
	}
	tmp := s.tmpName()
	err = unix.Mkdirat(s.work.fd, tmp, 0o700)
	if err == nil {
		err = s.chown(s.work.fd, tmp, int(st.Uid), int(st.Gid))
	}
	if err == nil {
		err = s.work.setxattr(tmp, s.opaqueXattr(), []byte("y"))
	}
	if err == nil {
		err = unix.Fchmodat(s.work.fd, tmp, st.Mode&0o7777, 0)
	}
	if err == nil {
		err = s.intoUpper(tmp, rel, unix.RENAME_EXCHANGE)
	}
	if err != nil {
		removeAll(s.work, tmp)
		return s.upper.err("empty", rel, err)
	}
	return removeAll(s.work, tmp)
}
