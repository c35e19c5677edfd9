package cow

import (
	"errors"
	"os"
	"slices"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Object is a merged object as a lookup found it.
type Object struct {
	// Layer is the topmost layer holding the object: the upper once
	// it has been copied up or created there.
	Layer *Layer
	// Lowers are, for a directory, the lower layers whose directory
	// at the same path shows through it, top-down; for anything else, the
	// lower layer holding the copy-up source, if any.
	Lowers []*Layer
	// Ino is the merged inode number: stable across copy-up and remount.
	Ino uint64
	// Mode is the file type and permission bits.
	Mode uint32
	// indexName is the object's name in the link index when it is served
	// from there (Layer is then the index); see linkindex.go.
	indexName string
	// meta is set for a metadata-only copy (format.go): Layer holds
	// its metadata, and data, at dataRel, its data (nil when no layer
	// below has it).
	meta    bool
	data    *Layer
	dataRel string
	// memo, for a directory, is what the stack remembers about it.
	memo *dirMemo
}

// dirMemo is what a stack remembers about a merged directory, when nothing
// else changes its layers (Config.Exclusive): whether the upper lacks it
// (Stack.upperDirAbsent), and which names its lower layers hold, as the
// last listing found them (lowerNames, filled by readdir).
type dirMemo struct {
	noUpper atomic.Pointer[upperCount]
	names   atomic.Pointer[lowerNames]
}

// upperCount is the upper, and its count of changes, when it was seen to
// have no directory at a directory's path.
type upperCount struct {
	l       *Layer
	changes uint64
}

// lowerNames is what a listing of a directory found in its lower layers,
// numbered as in dirLayers: bit k of names[n] is set when layer k holds n,
// of marks[n] when it holds n's marker; listed has bit k set for each
// layer k the listing read.
type lowerNames struct {
	listed uint64
	names  map[string]uint64
	marks  map[string]uint64
}

// knows reports whether the listing read layer k and, if so, whether that
// layer holds name and whether it holds name's marker.
func (ln *lowerNames) knows(k int, name string) (known, has, marked bool) {
	if ln == nil || k < 0 || k >= 64 || ln.listed&(1<<k) == 0 {
		return false, false, false
	}
	return true, ln.names[name]&(1<<k) != 0, ln.marks[name]&(1<<k) != 0
}

// Metacopy reports whether o is a metadata-only copy: its layer holds its
// metadata, a layer below it its data.
func (o *Object) Metacopy() bool { return o.meta }

// DataUpper reports whether o's data is in the upper layer: o is there and
// is not a metadata-only copy.
func (o *Object) DataUpper() bool { return o.Layer.upper && !o.meta }

// dataLoc returns the layer and path of o's data, o being at rel.
func (o *Object) dataLoc(rel string) (*Layer, string) {
	if o.meta {
		return o.data, o.dataRel
	}
	return o.Layer, o.loc(rel)
}

// SameData reports whether o at rel and p at prel have their data in the
// same file of the same layer.
func (o *Object) SameData(rel string, p *Object, prel string) bool {
	l1, p1 := o.dataLoc(rel)
	l2, p2 := p.dataLoc(prel)
	return l1 == l2 && p1 == p2
}

// IsDir reports whether o is a directory.
func (o *Object) IsDir() bool { return o.Mode&unix.S_IFMT == unix.S_IFDIR }

// Upper reports whether o is in the upper layer.
func (o *Object) Upper() bool { return o.Layer.upper }

// Frozen reports whether o's layer cannot change while mounted: a lower,
// committed or not, and not the link index.
func (o *Object) Frozen() bool { return !o.Layer.upper && o.indexName == "" }

// Root returns the root directory of the merged view.
func (s *Stack) Root() (*Object, error) {
	var o *Object
	for _, l := range s.layers() {
		st, err := l.lstat("")
		if err != nil {
			return nil, err
		}
		if o == nil {
			o = &Object{Layer: l, Ino: s.ino(l, "", &st), Mode: st.Mode}
		} else {
			o.Lowers = append(o.Lowers, l)
		}
		opaque, err := l.isOpaque("")
		if err != nil {
			return nil, err
		}
		if opaque {
			break
		}
	}
	s.giveMemo(o)
	return o, nil
}

// giveMemo gives o, if a directory, a memo, when the stack may remember
// (Config.Exclusive): a directory without one is looked at every time.
func (s *Stack) giveMemo(o *Object) {
	if o.IsDir() && s.cfg.Exclusive {
		o.memo = &dirMemo{}
	}
}

// searchLayers returns the layers to search for the children of dir, at
// rel: the upper, then dir's layers (dirLayers), which start at the
// returned offset.
func (s *Stack) searchLayers(dir *Object, rel string) ([]*Layer, int) {
	ls := make([]*Layer, 0, len(dir.Lowers)+2)
	if s.upper != nil && dir.Layer != s.upper && !s.upperDirAbsent(dir, rel) {
		// dir was not in the upper when it was looked up, but a
		// copy-up of a child may have made it there since.
		ls = append(ls, s.upper)
	}
	off := len(ls)
	ls = append(ls, dir.Layer)
	return append(ls, dir.Lowers...), off
}

// upperDirAbsent reports whether the upper has no directory at rel, the
// path of dir, which is not in the upper: then none of dir's children are
// there either, nor markers hiding them. A cold find of a tree that is
// all in lowers looks once per directory instead of twice per entry
// (the entry and its ".wh." marker). The answer is remembered in dir's
// memo, if it has one, until the upper's namespace next changes.
func (s *Stack) upperDirAbsent(dir *Object, rel string) bool {
	u := s.upper
	n := u.changes.Load()
	m := dir.memo
	if m != nil {
		if c := m.noUpper.Load(); c != nil && c.l == u && c.changes == n {
			return true
		}
	}
	st, err := u.lstat(rel)
	switch {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return false
	case err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR):
		return false // the lookups in the upper report it
	}
	// Nothing, or not a directory: a child's path in the upper does
	// not resolve (or would leave the layer through a symlink).
	if m != nil {
		m.noUpper.Store(&upperCount{l: u, changes: n})
	}
	return true
}

// Lookup finds name in the merged directory dir at path dirRel. It returns
// an error wrapping ENOENT when the name is absent or hidden.
func (s *Stack) Lookup(dir *Object, dirRel, name string) (*Object, error) {
	o, _, err := s.LookupStat(dir, dirRel, name)
	return o, err
}

// LookupStat is Lookup that also returns the object's attributes as Stat
// would, from the lookup's own stat.
func (s *Stack) LookupStat(dir *Object, dirRel, name string) (*Object, unix.Stat_t, error) {
	var top unix.Stat_t
	if name == "." || name == ".." || IsReservedName(name) {
		return nil, top, &os.PathError{Op: "lookup", Path: join(dirRel, name), Err: unix.ENOENT}
	}
	rel := join(dirRel, name)
	var o *Object
	layers, off := s.searchLayers(dir, dirRel)
	ln := dir.listing()
	for i, l := range layers {
		// Whether l hides rel in the layers below (a marker, an opaque
		// directory) matters only when there are some.
		last := i == len(layers)-1
		known, has, marked := ln.knows(i-off, name)
		hidesBelow := func() bool {
			if known {
				return marked
			}
			return l.hasMarker(dirRel, name)
		}
		var st unix.Stat_t
		err := error(unix.ENOENT) // the listing found no rel in l
		if !known || has {
			st, err = l.lstat(rel)
		}
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			if last || hidesBelow() {
				break
			}
			continue
		}
		if err != nil {
			return nil, top, err
		}
		if isWhiteout(&st) {
			break
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if o == nil {
			o = &Object{Layer: l, Ino: s.ino(l, rel, &st), Mode: st.Mode}
			top = st
			if io, ist, ok := s.indexed(l, &st, o.Ino); ok {
				o, top = io, ist
				break
			}
			if !isDir {
				if !l.upper {
					o.Lowers = []*Layer{l}
				}
				s.resolveMetacopy(o, l, rel, &st)
				break
			}
		} else {
			if !isDir {
				break
			}
			o.Lowers = append(o.Lowers, l)
		}
		if last {
			break
		}
		opaque, err := l.isOpaque(rel)
		if err != nil {
			return nil, top, err
		}
		if opaque || hidesBelow() {
			break
		}
	}
	if o == nil {
		return nil, top, &os.PathError{Op: "lookup", Path: rel, Err: unix.ENOENT}
	}
	s.giveMemo(o)
	s.FixStat(o, &top)
	return o, top, nil
}

// lowerHas reports whether a lower layer under dir shows something at name,
// so that removing name from the merged view needs a whiteout.
func (s *Stack) lowerHas(dir *Object, dirRel, name string) (bool, error) {
	rel := join(dirRel, name)
	lowers := dir.Lowers
	if !dir.Layer.upper {
		lowers = append([]*Layer{dir.Layer}, lowers...)
	}
	for _, l := range lowers {
		st, err := l.lstat(rel)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			if l.hasMarker(dirRel, name) {
				return false, nil
			}
			continue
		}
		if err != nil {
			return false, err
		}
		return !isWhiteout(&st), nil
	}
	return false, nil
}

// Stat returns the attributes of o at rel as the merged view shows them.
func (s *Stack) Stat(o *Object, rel string) (unix.Stat_t, error) {
	st, err := o.Layer.lstat(o.loc(rel))
	if err != nil {
		return st, err
	}
	s.FixStat(o, &st)
	return st, nil
}

// InUpper reports whether fd is open on o's file in the upper, o being at
// rel: a descriptor opened before a commit that kept the file there.
func (s *Stack) InUpper(o *Object, rel string, fd int) bool {
	if !o.DataUpper() || o.indexName != "" {
		return false
	}
	var a, b unix.Stat_t
	if unix.Fstat(fd, &a) != nil {
		return false
	}
	b, err := o.Layer.lstat(rel)
	return err == nil && a.Dev == b.Dev && a.Ino == b.Ino
}

// resolveMetacopy marks o, found at rel in l with attributes st, a
// metadata-only copy when it is one, and finds its data in the layers below
// l.
func (s *Stack) resolveMetacopy(o *Object, l *Layer, rel string, st *unix.Stat_t) {
	origin, ok := s.metacopyOrigin(l, rel, st)
	if !ok {
		return
	}
	o.meta = true
	o.data, o.dataRel = s.dataBelow(l, origin)
}

// dataBelow returns the layer below l, and the path there, of the data of a
// metadata-only copy in l whose data is at rel: the regular file the merged
// view of those layers shows at rel, followed through further
// metadata-only copies. The layer is nil if there is none.
func (s *Stack) dataBelow(l *Layer, rel string) (*Layer, string) {
	layers := s.layers()
	i := slices.Index(layers, l)
	if i < 0 {
		return nil, rel
	}
	for _, b := range layers[i+1:] {
		st, err := b.lstat(rel)
		if err == nil {
			if st.Mode&unix.S_IFMT != unix.S_IFREG {
				return nil, rel
			}
			if origin, ok := s.metacopyOrigin(b, rel, &st); ok {
				return s.dataBelow(b, origin)
			}
			return b, rel
		}
		if _, _, hidden := b.hides(rel); hidden {
			return nil, rel
		}
	}
	return nil, rel
}

// FixStat turns a layer's attributes into the merged view's. A
// metadata-only copy reports the blocks of its data, as the kernel does.
func (s *Stack) FixStat(o *Object, st *unix.Stat_t) {
	if o.meta && o.data != nil {
		if dst, err := o.data.lstat(o.dataRel); err == nil {
			st.Blocks = dst.Blocks
		}
	}
	st.Ino = o.Ino
	// A merged directory reports one link, as the kernel's does:
	// counting subdirectories across layers is not worth it.
	if o.IsDir() && (len(o.Lowers) > 0) {
		st.Nlink = 1
	}
	if o.indexName != "" {
		st.Nlink = s.nlink(o, st)
	}
}
