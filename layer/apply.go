package layer

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/unionmount/unionmount/cow"
	"golang.org/x/sys/unix"
)

// applyPathMax bounds the length of an entry's path. Longer paths cannot be
// named by the path system calls that programs use on the unpacked tree, so
// a layer holding one is refused rather than unpacked half usable (this
// also bounds the depth of a directory chain an archive can ask for).
const applyPathMax = unix.PathMax - 1

// applyChunk is the unit in which file data is copied; a chunk of zeros is
// left as a hole.
const applyChunk = 128 << 10

// Apply unpacks the uncompressed layer tar r into a new lower directory dir
// in cow's on-disk format: a whiteout ".wh.NAME" becomes cow's whiteout, an
// opaque marker ".wh..wh..opq" marks its directory opaque (OCI image-spec
// layer.md#whiteouts). dir must not exist; the layer is built in a sibling
// temporary directory, synced and renamed to dir at the end, so that dir
// appears complete or not at all: on any error nothing is left behind.
//
// Apply refuses absolute names, ".." components, names longer than
// PATH_MAX, parents that are not directories of this layer (a symlink
// among them), duplicate paths, hard links to anything but an earlier
// non-directory of this layer, the invalid whiteout names ".wh.", ".wh.."
// and ".wh...", a 0/0 character device (it would read as a whiteout) and
// entry types it cannot represent. Each error is one line naming the entry.
//
// Semantics: missing parents are created as directories 0755 owned by
// root; a whiteout of a path this layer also creates is dropped (a layer's
// whiteouts hide the layers below only), except that a directory deleted
// and created again becomes opaque, as applying the layer in order would
// leave it; a whiteout inside a directory this layer marks opaque or
// deletes is dropped too; xattrs come from the PAX records
// SCHILY.xattr.*, except those in the overlay namespaces
// (trusted.overlay.*, user.overlay.*, user.fuseoverlayfs.*), which a layer
// must not use to smuggle markers in; ownership is set before the mode
// and the mode before the xattrs, since chown clears security.capability;
// directory metadata is set after their children are in place; a hard link
// takes its target's metadata. Sparse entries are expanded to their
// declared size, but runs of zeros are left as holes, so an archive
// declaring a huge sparse file costs disk space only for the data it holds
// (and reading time for the size it declares).
//
// With opt.Rootless, device nodes become empty regular files with the
// entry's mode (placeholders), and ownership and xattrs the kernel refuses
// are dropped, each with a warning; otherwise every such failure is an
// error.
func Apply(r io.Reader, dir string, opt ApplyOptions) (stats Stats, err error) {
	dir = filepath.Clean(dir)
	if _, err := os.Lstat(dir); err == nil {
		return Stats{}, fmt.Errorf("unpack layer: %s: %w", dir, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Stats{}, fmt.Errorf("unpack layer: %w", err)
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return Stats{}, fmt.Errorf("unpack layer: %w", err)
	}
	tmp := dir + ".partial-" + hex.EncodeToString(rnd[:])
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return Stats{}, fmt.Errorf("unpack layer: %w", err)
	}
	a := &applier{
		opt:      opt,
		root:     -1,
		objs:     map[string]applyKind{"": applyImplied},
		seen:     map[string]bool{},
		dirIndex: map[string]int{"": 0},
		dirs:     []applyDir{{rel: ""}},
		buf:      make([]byte, applyChunk),
		drops:    map[string]*applyDrop{},
	}
	defer func() {
		if a.root >= 0 {
			unix.Close(a.root)
		}
		if err != nil {
			if rerr := applyRemoveTree(tmp); rerr != nil {
				err = fmt.Errorf("%w (and removing %s: %v)", err, tmp, rerr)
			}
		}
	}()
	a.root, err = unix.Open(tmp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stats{}, fmt.Errorf("unpack layer: open %s: %w", tmp, err)
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return a.stats, fmt.Errorf("read layer tar after %d entries: %w", a.stats.Entries, err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue // PAX defaults for the entries that follow; Go applies none of ours
		}
		a.stats.Entries++
		if err := a.entry(tr, hdr); err != nil {
			return a.stats, err
		}
		a.progress(false)
	}
	if err := a.finish(); err != nil {
		return a.stats, err
	}
	// One syncfs makes the whole tree durable before it gets its name.
	if err := unix.Syncfs(a.root); err != nil {
		return a.stats, fmt.Errorf("unpack layer: sync %s: %w", tmp, err)
	}
	if err := applyRenameNew(tmp, dir); err != nil {
		return a.stats, fmt.Errorf("unpack layer: rename into place: %w", err)
	}
	if err := applySyncDir(filepath.Dir(dir)); err != nil {
		// The name may not last: take the layer back rather than
		// leave one that can vanish.
		if rerr := applyRemoveTree(dir); rerr != nil {
			err = fmt.Errorf("%w (and removing %s: %v)", err, dir, rerr)
		}
		return a.stats, fmt.Errorf("unpack layer: sync the parent of %s: %w", dir, err)
	}
	a.progress(true)
	for _, k := range slices.Sorted(maps.Keys(a.drops)) {
		d := a.drops[k]
		a.warnf("%s of %d entries not set, as the kernel refused it (first: %q: %v)", k, d.n, d.first, d.err)
	}
	return a.stats, nil
}

// applyKind is what this layer holds at a path.
type applyKind uint8

const (
	applyImplied applyKind = iota // a directory made for a child's sake
	applyDirectory
	applyFile    // any other non-directory but a symlink
	applySymlink // never a parent, never followed
	applyWhiteout
)

// applyDir is a directory whose metadata is set once its children are in.
type applyDir struct {
	rel string
	hdr *tar.Header // nil for an implied directory: 0755, root
}

// applyDrop counts the entries that lost one kind of metadata as rootless.
type applyDrop struct {
	n           int
	first, last string
	err         error
}

// applier is the state of one Apply.
type applier struct {
	opt  ApplyOptions
	root int // the temporary directory the layer is built in

	// objs holds what this layer has created at each path; seen holds
	// every entry's path, markers included, to refuse duplicates.
	objs map[string]applyKind
	seen map[string]bool
	// dirs are the directories in the order they were made, the root
	// first; dirIndex finds one by path.
	dirs     []applyDir
	dirIndex map[string]int
	// opaque and whiteouts are the markers, made at the end when the
	// layer's own entries are known.
	opaque    []string
	whiteouts []string

	buf          []byte
	stats        Stats
	lastProgress time.Time
	drops        map[string]*applyDrop
}

func (a *applier) warnf(format string, args ...any) {
	if a.opt.Warn != nil {
		a.opt.Warn(fmt.Sprintf(format, args...))
	}
}

func (a *applier) progress(final bool) {
	if a.opt.Progress == nil {
		return
	}
	if now := time.Now(); final || now.Sub(a.lastProgress) >= 100*time.Millisecond {
		a.lastProgress = now
		a.opt.Progress(a.stats.Entries, a.stats.Bytes)
	}
}

// entryErr is the one-line error for the entry named name.
func entryErr(name string, format string, args ...any) error {
	return fmt.Errorf("layer entry %q: %w", name, fmt.Errorf(format, args...))
}

// applyCleanPath turns an entry name into a path relative to the layer's
// root ("" for the root), refusing names that leave it.
func applyCleanPath(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("empty name")
	case strings.HasPrefix(name, "/"):
		return "", errors.New("absolute path")
	case strings.IndexByte(name, 0) >= 0:
		return "", errors.New("NUL in name")
	case len(name) > applyPathMax:
		return "", fmt.Errorf("path longer than %d bytes", applyPathMax)
	}
	var parts []string
	for p := range strings.SplitSeq(name, "/") {
		switch p {
		case "", ".":
		case "..":
			return "", errors.New("path escapes the layer")
		default:
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "/"), nil
}

// applySplit splits rel into its directory and its last name.
func applySplit(rel string) (dir, name string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return "", rel
	}
	return rel[:i], rel[i+1:]
}

func applyJoin(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// entry unpacks one tar entry (data included) or records its marker.
func (a *applier) entry(tr *tar.Reader, hdr *tar.Header) error {
	name := hdr.Name
	rel, err := applyCleanPath(name)
	if err != nil {
		return entryErr(name, "%v", err)
	}
	if a.seen[rel] {
		return entryErr(name, "duplicate path in the layer")
	}
	a.seen[rel] = true
	dirRel, base := applySplit(rel)
	for comp := range strings.SplitSeq(dirRel, "/") {
		if strings.HasPrefix(comp, cow.OCIWhiteoutPrefix+cow.OCIWhiteoutPrefix) {
			a.warnf("layer entry %q: AUFS metadata, skipped", name)
			return nil
		}
		if strings.HasPrefix(comp, cow.OCIWhiteoutPrefix) {
			return entryErr(name, "parent %q is a whiteout", comp)
		}
	}
	if strings.HasPrefix(base, cow.OCIWhiteoutPrefix) {
		return a.marker(name, dirRel, base)
	}
	if rel == "" {
		if hdr.Typeflag != tar.TypeDir {
			return entryErr(name, "the layer's root is not a directory")
		}
		a.dirs[0].hdr = hdr
		return nil
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return a.mkdir(name, rel, hdr)
	case tar.TypeReg, tar.TypeCont, tar.TypeGNUSparse:
		return a.create(name, rel, hdr, func(dirfd int, base string) (int, error) {
			return a.writeFile(tr, dirfd, base, hdr)
		})
	case tar.TypeSymlink:
		return a.symlink(name, rel, hdr)
	case tar.TypeLink:
		return a.link(name, rel, hdr)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return a.create(name, rel, hdr, func(dirfd int, base string) (int, error) {
			return a.mknod(name, dirfd, base, hdr)
		})
	}
	return entryErr(name, "entry type %q is not supported", hdr.Typeflag)
}

// marker records the whiteout or opaque marker base in dirRel.
func (a *applier) marker(name, dirRel, base string) error {
	if base == cow.OCIOpaqueMarker {
		a.opaque = append(a.opaque, dirRel)
		return nil
	}
	if strings.HasPrefix(base, cow.OCIWhiteoutPrefix+cow.OCIWhiteoutPrefix) {
		a.warnf("layer entry %q: AUFS metadata, skipped", name)
		return nil
	}
	target := base[len(cow.OCIWhiteoutPrefix):]
	if target == "" || target == "." || target == ".." {
		return entryErr(name, "invalid whiteout name")
	}
	a.whiteouts = append(a.whiteouts, applyJoin(dirRel, target))
	return nil
}

// openBeneath opens the directory rel of the layer (O_PATH) without
// following a symlink or leaving the layer on the way.
func (a *applier) openBeneath(rel string) (int, error) {
	p := rel
	if p == "" {
		p = "."
	}
	fd, err := unix.Openat2(a.root, p, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != unix.ENOSYS {
		return fd, err
	}
	// Before Linux 5.6: walk one name at a time, never following one.
	fd, err = unix.Openat(a.root, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil || rel == "" {
		return fd, err
	}
	for comp := range strings.SplitSeq(rel, "/") {
		next, err := unix.Openat(fd, comp, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// openDir opens the directory dirRel of the layer, making it and its
// missing parents as implied directories. name is the entry's, for errors.
func (a *applier) openDir(name, dirRel string) (int, error) {
	// Find the first missing component; every one before it must be a
	// directory of this layer.
	missing := -1
	for i := 0; i <= len(dirRel); i++ {
		if i < len(dirRel) && dirRel[i] != '/' {
			continue
		}
		prefix := dirRel[:i]
		k, ok := a.objs[prefix]
		if !ok {
			missing = i
			break
		}
		switch k {
		case applyImplied, applyDirectory:
		case applySymlink:
			return -1, entryErr(name, "parent %q is a symlink", prefix)
		default:
			return -1, entryErr(name, "parent %q is not a directory", prefix)
		}
	}
	if missing < 0 {
		fd, err := a.openBeneath(dirRel)
		if err != nil {
			return -1, entryErr(name, "open parent: %w", err)
		}
		return fd, nil
	}
	start := strings.LastIndexByte(dirRel[:missing], '/') + 1 // first missing component
	have := ""
	if start > 0 {
		have = dirRel[:start-1]
	}
	fd, err := a.openBeneath(have)
	if err != nil {
		return -1, entryErr(name, "open parent: %w", err)
	}
	for i := start; i <= len(dirRel); i++ {
		if i < len(dirRel) && dirRel[i] != '/' {
			continue
		}
		prefix := dirRel[:i]
		comp := prefix[strings.LastIndexByte(prefix, '/')+1:]
		if err := unix.Mkdirat(fd, comp, 0o700); err != nil {
			unix.Close(fd)
			return -1, entryErr(name, "create parent %q: %w", prefix, err)
		}
		a.objs[prefix] = applyImplied
		a.dirIndex[prefix] = len(a.dirs)
		a.dirs = append(a.dirs, applyDir{rel: prefix})
		next, err := unix.Openat(fd, comp, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return -1, entryErr(name, "open parent %q: %w", prefix, err)
		}
		fd = next
	}
	return fd, nil
}

// mkdir makes the directory rel, or gives the implied one there its entry.
// Its metadata waits for the end (finish), so that a directory without
// write or search permission still takes its children when rootless.
func (a *applier) mkdir(name, rel string, hdr *tar.Header) error {
	if k, ok := a.objs[rel]; ok {
		if k != applyImplied {
			return entryErr(name, "duplicate path in the layer")
		}
		a.objs[rel] = applyDirectory
		a.dirs[a.dirIndex[rel]].hdr = hdr
		return nil
	}
	dirRel, base := applySplit(rel)
	dirfd, err := a.openDir(name, dirRel)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	if err := unix.Mkdirat(dirfd, base, 0o700); err != nil {
		return entryErr(name, "mkdir: %w", err)
	}
	a.objs[rel] = applyDirectory
	a.dirIndex[rel] = len(a.dirs)
	a.dirs = append(a.dirs, applyDir{rel: rel, hdr: hdr})
	return nil
}

// newName checks that the non-directory rel is new to the layer (not an
// entry, nor a directory implied by one) and opens the directory that is
// to hold it, returning that descriptor and rel's last name.
func (a *applier) newName(name, rel string) (dirfd int, base string, err error) {
	if _, ok := a.objs[rel]; ok {
		return -1, "", entryErr(name, "duplicate path in the layer")
	}
	dirRel, base := applySplit(rel)
	dirfd, err = a.openDir(name, dirRel)
	return dirfd, base, err
}

// create makes the non-directory rel with make, which returns a descriptor
// of the new object (O_PATH or open), and sets its metadata.
func (a *applier) create(name, rel string, hdr *tar.Header, make func(dirfd int, base string) (int, error)) error {
	dirfd, base, err := a.newName(name, rel)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	fd, err := make(dirfd, base)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	a.objs[rel] = applyFile
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return entryErr(name, "stat: %w", err)
	}
	if err := a.setMeta(name, fd, hdr, st.Mode&unix.S_IFMT == unix.S_IFREG); err != nil {
		return err
	}
	return a.setTimes(name, fd, hdr)
}

// writeFile creates the regular file base in dirfd with the entry's data,
// leaving chunks of zeros as holes.
func (a *applier) writeFile(tr *tar.Reader, dirfd int, base string, hdr *tar.Header) (int, error) {
	fd, err := unix.Openat(dirfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return -1, entryErr(hdr.Name, "create: %w", err)
	}
	a.stats.Files++
	var off int64
	for {
		n, rerr := tr.Read(a.buf)
		if n > 0 {
			chunk := a.buf[:n]
			if !applyAllZero(chunk) {
				if _, err := unix.Pwrite(fd, chunk, off); err != nil {
					unix.Close(fd)
					return -1, entryErr(hdr.Name, "write: %w", err)
				}
			}
			off += int64(n)
			a.stats.Bytes += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			unix.Close(fd)
			return -1, entryErr(hdr.Name, "read data: %w", rerr)
		}
		a.progress(false)
	}
	// A trailing hole still counts in the size.
	if err := unix.Ftruncate(fd, off); err != nil {
		unix.Close(fd)
		return -1, entryErr(hdr.Name, "truncate: %w", err)
	}
	return fd, nil
}

var applyZeros = make([]byte, applyChunk)

func applyAllZero(b []byte) bool { return bytes.Equal(b, applyZeros[:len(b)]) }

// mknod creates the device or FIFO base in dirfd, or as rootless the
// empty regular file that stands for a device.
func (a *applier) mknod(name string, dirfd int, base string, hdr *tar.Header) (int, error) {
	perm := uint32(hdr.Mode) & 0o7777
	var mode uint32
	var dev uint64
	switch hdr.Typeflag {
	case tar.TypeChar:
		mode = unix.S_IFCHR
	case tar.TypeBlock:
		mode = unix.S_IFBLK
	default:
		mode = unix.S_IFIFO
	}
	if mode != unix.S_IFIFO {
		if hdr.Devmajor < 0 || hdr.Devminor < 0 || hdr.Devmajor > 0xfff || hdr.Devminor > 0xfffff {
			return -1, entryErr(name, "invalid device number %d:%d", hdr.Devmajor, hdr.Devminor)
		}
		if mode == unix.S_IFCHR && hdr.Devmajor == 0 && hdr.Devminor == 0 {
			return -1, entryErr(name, "a 0/0 character device reads as an overlay whiteout; whiteouts are .wh. names in a layer")
		}
		dev = unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if a.opt.Rootless {
			a.warnf("layer entry %q: device %d:%d unpacked as an empty regular file (rootless)", name, hdr.Devmajor, hdr.Devminor)
			fd, err := unix.Openat(dirfd, base, unix.O_RDONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
			if err != nil {
				return -1, entryErr(name, "create placeholder: %w", err)
			}
			return fd, nil
		}
	}
	if err := unix.Mknodat(dirfd, base, mode|perm&0o777, int(dev)); err != nil {
		return -1, entryErr(name, "mknod: %w", err)
	}
	fd, err := unix.Openat(dirfd, base, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, entryErr(name, "open: %w", err)
	}
	return fd, nil
}

// symlink creates the symlink rel: owner and times only, as a symlink has
// no mode of its own and carries no user xattrs.
func (a *applier) symlink(name, rel string, hdr *tar.Header) error {
	dirfd, base, err := a.newName(name, rel)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	if err := unix.Symlinkat(hdr.Linkname, dirfd, base); err != nil {
		return entryErr(name, "symlink: %w", err)
	}
	a.objs[rel] = applySymlink
	uid, gid, err := applyOwner(hdr)
	if err != nil {
		return entryErr(name, "%v", err)
	}
	if err := unix.Fchownat(dirfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil && !a.drop("owner", name, err) {
		return entryErr(name, "lchown: %w", err)
	}
	if len(applyXattrs(hdr)) > 0 {
		a.warnf("layer entry %q: xattrs of a symlink dropped", name)
	}
	ts := applyTimes(hdr)
	if err := unix.UtimesNanoAt(dirfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return entryErr(name, "set times: %w", err)
	}
	return nil
}

// link makes rel another name of an earlier non-directory of this layer.
func (a *applier) link(name, rel string, hdr *tar.Header) error {
	target, err := applyCleanPath(hdr.Linkname)
	if err != nil {
		return entryErr(name, "hard link target %q: %v", hdr.Linkname, err)
	}
	switch k, ok := a.objs[target]; {
	case !ok || k == applyWhiteout:
		return entryErr(name, "hard link target %q is not an earlier entry of the layer", hdr.Linkname)
	case k == applyImplied || k == applyDirectory:
		return entryErr(name, "hard link target %q is a directory", hdr.Linkname)
	}
	dirfd, base, err := a.newName(name, rel)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	tdir, tbase := applySplit(target)
	tfd, err := a.openDir(name, tdir)
	if err != nil {
		return err
	}
	defer unix.Close(tfd)
	if err := unix.Linkat(tfd, tbase, dirfd, base, 0); err != nil {
		return entryErr(name, "link to %q: %w", hdr.Linkname, err)
	}
	a.objs[rel] = a.objs[target]
	return nil
}

// applyOwner returns the entry's owner, refusing ids chown cannot take.
func applyOwner(hdr *tar.Header) (uid, gid int, err error) {
	// -1 would mean "leave as is" to chown.
	const maxID = 1<<32 - 2
	if hdr.Uid < 0 || hdr.Uid > maxID || hdr.Gid < 0 || hdr.Gid > maxID {
		return 0, 0, fmt.Errorf("invalid owner %d:%d", hdr.Uid, hdr.Gid)
	}
	return hdr.Uid, hdr.Gid, nil
}

// applyXattrs returns the entry's xattrs (PAX SCHILY.xattr.NAME records),
// sorted by name.
func applyXattrs(hdr *tar.Header) []string {
	var names []string
	for k := range hdr.PAXRecords {
		if n, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

// applyOverlayXattr reports whether the xattr name is in a namespace cow
// reads markers or its own state from.
func applyOverlayXattr(name string) bool {
	for _, p := range []string{"trusted.overlay.", "user.overlay.", "user.fuseoverlayfs."} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// drop reports whether err, from setting the metadata kind of the entry
// name, is one to drop as rootless, and counts it for the summary warning.
func (a *applier) drop(kind, name string, err error) bool {
	if !a.opt.Rootless || !(errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EACCES) ||
		errors.Is(err, unix.EOPNOTSUPP)) {
		return false
	}
	d := a.drops[kind]
	if d == nil {
		d = &applyDrop{first: name, err: err}
		a.drops[kind] = d
	}
	if d.last != name {
		d.last = name
		d.n++
	}
	return true
}

// setMeta sets the owner, then the mode, then the xattrs of the object
// open as fd (O_PATH or not), in that order: chown clears setuid bits and
// security.capability. userXattrs tells whether the object can carry
// user.* xattrs (regular files and directories only).
func (a *applier) setMeta(name string, fd int, hdr *tar.Header, userXattrs bool) error {
	uid, gid, err := applyOwner(hdr)
	if err != nil {
		return entryErr(name, "%v", err)
	}
	if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil && !a.drop("owner", name, err) {
		return entryErr(name, "chown: %w", err)
	}
	p := "/proc/self/fd/" + strconv.Itoa(fd)
	if err := unix.Chmod(p, uint32(hdr.Mode)&0o7777); err != nil {
		return entryErr(name, "chmod: %w", err)
	}
	for _, x := range applyXattrs(hdr) {
		if applyOverlayXattr(x) {
			a.warnf("layer entry %q: xattr %s dropped: the overlay namespace is the union's own", name, x)
			continue
		}
		err := unix.Setxattr(p, x, []byte(hdr.PAXRecords["SCHILY.xattr."+x]), 0)
		if err == nil || a.drop("xattr", name, err) {
			continue
		}
		if errors.Is(err, unix.EOPNOTSUPP) || (errors.Is(err, unix.EPERM) && !userXattrs && strings.HasPrefix(x, "user.")) {
			a.warnf("layer entry %q: xattr %s dropped: %v", name, x, err)
			continue
		}
		return entryErr(name, "set xattr %s: %w", x, err)
	}
	return nil
}

// applyTimes returns the atime and mtime to set: both the entry's mtime,
// the atime of a layer being meaningless.
func applyTimes(hdr *tar.Header) []unix.Timespec {
	t := hdr.ModTime
	ts := unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
	return []unix.Timespec{ts, ts}
}

func (a *applier) setTimes(name string, fd int, hdr *tar.Header) error {
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), applyTimes(hdr), 0); err != nil {
		return entryErr(name, "set times: %w", err)
	}
	return nil
}

// finish makes the markers and sets the directories' metadata.
func (a *applier) finish() error {
	opaque := map[string]bool{}
	for _, d := range a.opaque {
		name := applyJoin(d, cow.OCIOpaqueMarker)
		k, ok := a.objs[d]
		if ok && k == applySymlink {
			return entryErr(name, "parent %q is a symlink", d)
		}
		if ok && k != applyImplied && k != applyDirectory {
			a.warnf("layer entry %q: opaque marker in a non-directory, dropped", name)
			continue
		}
		fd, err := a.openDir(name, d)
		if err != nil {
			return err
		}
		err = cow.MarkOpaque(fd, ".", a.opt.UserXattr)
		unix.Close(fd)
		if err != nil {
			if !a.opt.UserXattr && errors.Is(err, unix.EPERM) {
				err = fmt.Errorf("%w (unprivileged: unpack with user xattrs)", err)
			}
			return entryErr(name, "%w", err)
		}
		opaque[d] = true
	}
	deleted := map[string]bool{}
	for _, w := range a.whiteouts {
		deleted[w] = true
	}
	slices.Sort(a.whiteouts)
	for _, w := range a.whiteouts {
		if err := a.whiteout(w, opaque, deleted); err != nil {
			return err
		}
	}
	// Children before parents: a directory's times change as its
	// children appear, and as rootless its mode may forbid adding them.
	for i := len(a.dirs) - 1; i >= 0; i-- {
		if err := a.setDirMeta(a.dirs[i]); err != nil {
			return err
		}
	}
	return nil
}

// whiteout makes the whiteout for w unless this layer makes it pointless
// (an ancestor is opaque or deleted here, or w is a non-directory of this
// layer), or marks w opaque when this layer makes it a directory again.
// Whiteouts come sorted, so a directory's comes before those inside it.
func (a *applier) whiteout(w string, opaque, deleted map[string]bool) error {
	dirRel, base := applySplit(w)
	name := applyJoin(dirRel, cow.OCIWhiteoutPrefix+base)
	if opaque[""] {
		return nil
	}
	for i := 0; i <= len(dirRel); i++ {
		if i < len(dirRel) && dirRel[i] != '/' {
			continue
		}
		anc := dirRel[:i]
		k, made := a.objs[anc]
		switch {
		case opaque[anc]:
			// A whiteout in a directory of a single layer would
			// show in the kernel's readdir (fuse-overlayfs#306).
			return nil
		case deleted[anc] && (!made || k == applyWhiteout):
			return nil
		case made && k == applySymlink:
			return entryErr(name, "parent %q is a symlink", anc)
		case made && k != applyImplied && k != applyDirectory:
			a.warnf("layer entry %q: whiteout below a non-directory of the layer, dropped", name)
			return nil
		}
	}
	switch k, made := a.objs[w]; {
	case made && (k == applyImplied || k == applyDirectory):
		// Deleted and made again in this layer: the new directory
		// must not merge with the one below (OCI's explicit form of
		// an opaque directory, layer.md "Applying Changesets").
		if opaque[w] {
			return nil
		}
		fd, err := a.openBeneath(w)
		if err != nil {
			return entryErr(name, "open: %w", err)
		}
		defer unix.Close(fd)
		if err := cow.MarkOpaque(fd, ".", a.opt.UserXattr); err != nil {
			return entryErr(name, "%w", err)
		}
		opaque[w] = true
		return nil
	case made:
		return nil // replaced by this layer's own entry
	}
	fd, err := a.openDir(name, dirRel)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := cow.MakeWhiteout(fd, base); err != nil {
		return entryErr(name, "%w", err)
	}
	a.objs[w] = applyWhiteout
	return nil
}

// setDirMeta sets the metadata of the directory d: its entry's, or 0755
// and root for an implied one (as containerd and moby make them).
func (a *applier) setDirMeta(d applyDir) error {
	name := d.rel + "/"
	if d.hdr != nil {
		name = d.hdr.Name
	}
	fd, err := a.openBeneath(d.rel)
	if err != nil {
		return entryErr(name, "open: %w", err)
	}
	defer unix.Close(fd)
	if d.hdr != nil {
		if err := a.setMeta(name, fd, d.hdr, true); err != nil {
			return err
		}
		return a.setTimes(name, fd, d.hdr)
	}
	if a.opt.Rootless {
		// The unpacking user stands for root.
		if err := unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), 0o755); err != nil {
			return entryErr(name, "chmod: %w", err)
		}
		return nil
	}
	return a.setMeta(name, fd, &tar.Header{Mode: 0o755}, true)
}

// applyRenameNew renames tmp to dir, which must not exist.
func applyRenameNew(tmp, dir string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dir, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) {
		// A filesystem without RENAME_NOREPLACE: check, then rename
		// (a directory renamed over a non-empty one fails anyway).
		if _, lerr := os.Lstat(dir); lerr == nil {
			return &os.LinkError{Op: "rename", Old: tmp, New: dir, Err: fs.ErrExist}
		}
		return os.Rename(tmp, dir)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: tmp, New: dir, Err: err}
	}
	return nil
}

// applySyncDir makes the entries of the directory dir durable.
func applySyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// applyRemoveTree removes the tree at p, making its directories writable
// first if it has to (a rootless layer may hold read-only ones).
func applyRemoveTree(p string) error {
	if err := os.RemoveAll(p); err == nil {
		return nil
	}
	_ = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(q, 0o700) // best effort; RemoveAll reports what remains
		}
		return nil
	})
	return os.RemoveAll(p)
}
