package cow

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Metadata-only copy-up (the format is in format.go).
//
// A change of metadata (chmod, chown, utimes, setxattr, removexattr) or a
// rename of a big enough lower regular file copies up its metadata only:
// the upper file is a sparse placeholder of the same size, marked with
// overlay.metacopy, and reads go to the data in the layer below. The first
// change of data (an open for writing, O_TRUNC, truncate, fallocate,
// copy_file_range into it) or a link copies the data up, the way any
// copy-up is made: built in the work directory, with the metadata of the
// placeholder and the data of the layer below, then renamed over the
// placeholder, so the merged view shows the one or the other, both with the
// same data. A file with several lower names (the link index), and one
// smaller than MetacopyMin, is copied whole as before.

// MetacopyMin is the smallest file that a change of metadata copies up
// without its data. Below it a whole copy costs about as much as the
// placeholder, and the placeholder's xattrs may take more blocks than the
// file (ext4 gives them a block of their own when they do not fit in the
// inode), which would keep a lookup from telling it is one.
const MetacopyMin = 64 << 10

// errNoData is the error for a metadata-only copy whose data no layer below
// has.
func errNoData(rel string) error {
	return &os.PathError{Op: "open", Path: rel, Err: fmt.Errorf("metadata-only copy without data in the layers below: %w", unix.EIO)}
}

// CopyUpMeta copies o, at rel, into the upper for a change of its metadata
// only: a regular file of at least MetacopyMin bytes becomes a metadata-only
// copy when Config.Metacopy allows; anything else is copied whole, as by
// CopyUp. It returns o as it is now.
func (s *Stack) CopyUpMeta(o *Object, rel string) (*Object, error) {
	if s.upper == nil {
		return nil, &errRO
	}
	if o.Layer.upper && o.indexName == "" {
		return o, nil
	}
	if !s.cfg.Metacopy || o.indexName != "" ||
		o.Mode&unix.S_IFMT != unix.S_IFREG || (o.meta && o.data == nil) {
		return s.CopyUp(o, rel, true)
	}
	src, err := o.Layer.lstat(rel)
	if err != nil {
		return nil, err
	}
	if src.Size < MetacopyMin || (src.Nlink > 1 && s.index != nil) {
		return s.CopyUp(o, rel, true)
	}
	if err := s.copyUpParents(rel); err != nil {
		return nil, err
	}
	unlock := s.copyLock(rel)
	defer unlock()
	if st, err := s.upper.lstat(rel); err == nil && !isWhiteout(&st) {
		// Raced with another copy-up.
		c := s.upperObject(o)
		c.meta, c.data, c.dataRel = false, nil, ""
		s.resolveMetacopy(c, s.upper, rel, &st)
		return c, nil
	}
	tmp := s.tmpName()
	meta := true
	err = s.buildCopy(o, rel, &src, tmp, copyMetaOnly)
	if err == nil {
		var st unix.Stat_t
		if err = unix.Fstatat(s.work.fd, tmp, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && !mayBeMetacopy(&st) {
			// Its xattrs took blocks: a lookup would not see it
			// is a placeholder. Copy the data after all.
			removeAll(s.work, tmp)
			meta = false
			err = s.buildCopy(o, rel, &src, tmp, copyWithData)
		}
	}
	if err != nil {
		removeAll(s.work, tmp)
		return nil, fmt.Errorf("copy up %s: %w", rel, err)
	}
	if err := s.placeCopy(tmp, rel); err != nil {
		return nil, err
	}
	c := s.upperObject(o)
	c.meta, c.data, c.dataRel = false, nil, ""
	if meta {
		c.meta = true
		c.data, c.dataRel = o.dataLoc(rel)
	}
	return c, nil
}

// copyUpData copies the data of the metadata-only copy o, at rel in the
// upper, into the upper (none when data is false: the caller truncates it
// to zero). It returns o as it is now.
func (s *Stack) copyUpData(o *Object, rel string, data bool) (*Object, error) {
	unlock := s.copyLock(rel)
	defer unlock()
	return s.copyUpDataLocked(o, rel, data)
}

// copyUpDataLocked is copyUpData with rel's copy-up lock held.
func (s *Stack) copyUpDataLocked(o *Object, rel string, data bool) (*Object, error) {
	st, err := s.upper.lstat(rel)
	if err != nil {
		return nil, err
	}
	c := *o
	c.meta, c.data, c.dataRel = false, nil, ""
	origin, ok := s.metacopyOrigin(s.upper, rel, &st)
	if !ok {
		return &c, nil // raced with another copy-up
	}
	m := &Object{Layer: s.upper, Mode: st.Mode, Ino: o.Ino, meta: true}
	m.data, m.dataRel = s.dataBelow(s.upper, origin)
	if m.data == nil && data {
		return nil, errNoData(rel)
	}
	tmp := s.tmpName()
	if err := s.buildCopy(m, rel, &st, tmp, copyHow(data)); err != nil {
		removeAll(s.work, tmp)
		return nil, fmt.Errorf("copy up the data of %s: %w", rel, err)
	}
	if err := s.replaceCopy(tmp, rel, &st); err != nil {
		return nil, err
	}
	return &c, nil
}

// replaceCopy renames the finished copy tmp over the upper file rel, which
// must still be the one with attributes old; it keeps the parent
// directory's times, as placeCopy does.
func (s *Stack) replaceCopy(tmp, rel string, old *unix.Stat_t) error {
	s.ns.Lock()
	defer s.ns.Unlock()
	cur, err := s.upper.lstat(rel)
	if err == nil && (cur.Ino != old.Ino || cur.Dev != old.Dev) {
		err = s.upper.err("copy up", rel, fmt.Errorf("replaced during the copy-up: %w", unix.ESTALE))
	}
	if err != nil {
		removeAll(s.work, tmp)
		return err
	}
	dir, _ := split(rel)
	pst, perr := s.upper.lstat(dir)
	if err := s.intoUpper(tmp, rel, 0); err != nil {
		removeAll(s.work, tmp)
		return fmt.Errorf("copy up %s: %w", rel, s.upper.err("rename", rel, err))
	}
	if perr == nil {
		_ = s.upper.setTimes(dir, []unix.Timespec{pst.Atim, pst.Mtim}) // best effort
	}
	return nil
}

// lockMeta takes rel's copy-up lock for a change of the metadata of o, a
// metadata-only copy at rel in the upper, so that a concurrent copy-up of
// its data does not lose the change. It returns o as it is now (its data
// may have been copied up meanwhile) and the unlock.
func (s *Stack) lockMeta(o *Object, rel string) (*Object, func()) {
	unlock := s.copyLock(rel)
	st, err := s.upper.lstat(rel)
	if err == nil {
		if _, ok := s.metacopyOrigin(s.upper, rel, &st); ok {
			return o, unlock
		}
	}
	c := *o
	c.meta, c.data, c.dataRel = false, nil, ""
	return &c, unlock
}

// keepMeta makes sure the metadata-only copy o at rel is still seen as one
// after a change of its xattrs, which may have given it blocks: if so, its
// data is copied up. rel's copy-up lock is held.
func (s *Stack) keepMeta(o *Object, rel string) (*Object, error) {
	st, err := s.upper.lstat(rel)
	if err != nil || mayBeMetacopy(&st) {
		return o, err
	}
	return s.copyUpDataLocked(o, rel, true)
}

// markMoved records, on the metadata-only copy o at rel in the upper, where
// its data is (overlay.redirect), before a rename moves it away from the
// path of its data.
func (s *Stack) markMoved(o *Object, rel string) (*Object, error) {
	if o == nil || !o.meta || !o.Layer.upper {
		return o, nil
	}
	o, unlock := s.lockMeta(o, rel)
	defer unlock()
	if !o.meta {
		return o, nil
	}
	if err := s.setRedirect(rel, o.dataRel); err != nil {
		return nil, err
	}
	return s.keepMeta(o, rel)
}
