package integration

import (
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// This file describes layer trees declaratively and builds them on disk, so
// that each side of a differential test gets its own identical copy.

// fent is one entry of a layer fixture. The zero mode means 0644 for files
// and 0755 for directories (write noPerm for mode 0000); uid and gid
// default to root.
type fent struct {
	path   string
	kind   byte   // 'd' dir, 'f' file, 'l' symlink, 'p' fifo, 'c' char device, 'h' hard link, 'w' whiteout, 's' sparse file
	mode   uint32 // permission bits, including setuid/setgid/sticky
	uid    int
	gid    int
	data   string // file content, symlink target, or hard link target path
	rdev   uint64 // char device number
	size   int64  // sparse file size
	xattrs map[string]string
	opaque bool // directory carries trusted.overlay.opaque=y
}

// layerSpec is one layer: its entries, top to bottom order does not matter.
type layerSpec []fent

// fixtureEpoch is the base of every fixture mtime. Anything newer was
// written by the test itself.
var fixtureEpoch = time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)

// longName is a 255-byte file name, the longest a name can be.
var longName = strings.Repeat("n", 250) + ".long"

// noPerm asks for permission bits 0000 in a fixture entry.
const noPerm = 1 << 20

// baseLayer is the bottom lower layer.
var baseLayer = layerSpec{
	{path: "lower.txt", kind: 'f', data: "0123456789abcdef\n", uid: 1000, gid: 1000,
		xattrs: map[string]string{"user.color": "blue", "trusted.t": "tv"}},
	{path: "big.txt", kind: 'f', data: strings.Repeat("0123456789abcdef", 8192)},
	{path: "ro.txt", kind: 'f', mode: 0444, data: "read only\n"},
	{path: "zero.txt", kind: 'f', mode: noPerm, data: "no perms\n"},
	{path: "suid", kind: 'f', mode: 04755, data: "#!/bin/sh\n"},
	{path: "sgid", kind: 'f', mode: 02750, gid: 1000, data: "sgid\n"},
	{path: "empty.txt", kind: 'f'},
	{path: "fifo", kind: 'p', mode: 0640},
	{path: "chr", kind: 'c', mode: 0600, rdev: unix.Mkdev(1, 7)},
	{path: "link", kind: 'l', data: "lower.txt"},
	{path: "dirlink", kind: 'l', data: "d"},
	{path: "dangling", kind: 'l', data: "nowhere"},
	{path: "abslink", kind: 'l', data: "/nonexistent/abs"},
	{path: "hl1", kind: 'f', data: "hard linked\n"},
	{path: "hl2", kind: 'h', data: "hl1"},
	{path: "sparse", kind: 's', size: 4 << 20, data: "head"},
	{path: "with space.txt", kind: 'f', data: "spaced\n"},
	{path: "ünïcødé-ファイル", kind: 'f', data: "unicode\n"},
	{path: longName, kind: 'f', data: "long name\n"},
	{path: "shadow.txt", kind: 'f', data: "base shadow\n"},
	{path: "shadow2.txt", kind: 'f', data: "base shadow2\n"},
	{path: "hidden", kind: 'f', data: "hidden by mid whiteout\n"},
	{path: "upw.txt", kind: 'f', data: "hidden by upper whiteout\n"},
	{path: "d", kind: 'd'},
	{path: "d/f", kind: 'f', data: "d/f base\n", xattrs: map[string]string{"user.k": "v"}},
	{path: "d/g", kind: 'f', data: "d/g hidden by mid\n"},
	{path: "d/h", kind: 'f', data: "d/h base\n"},
	{path: "d/sub", kind: 'd', mode: 0750, uid: 1000, gid: 1000},
	{path: "d/sub/s1", kind: 'f', data: "s1\n"},
	{path: "d/sub/deep", kind: 'd'},
	{path: "d/sub/deep/er", kind: 'd'},
	{path: "d/sub/deep/er/est", kind: 'd'},
	{path: "d/sub/deep/er/est/leaf", kind: 'f', data: "leaf\n"},
	{path: "opq", kind: 'd'},
	{path: "opq/below", kind: 'f', data: "hidden by opaque mid dir\n"},
	{path: "opq/both", kind: 'f', data: "base version\n"},
	{path: "gone", kind: 'd'},
	{path: "gone/x", kind: 'f', data: "gone\n"},
	{path: "wdir", kind: 'd'},
	{path: "wdir/x", kind: 'f', data: "whited out in mid\n"},
	{path: "rmme", kind: 'd'},
	{path: "rmme/a", kind: 'f', data: "a\n"},
	{path: "rmme/b", kind: 'f', data: "b\n"},
	{path: "full", kind: 'd'},
	{path: "full/keep", kind: 'f', data: "keep\n"},
	{path: "empty", kind: 'd'},
	{path: "owned", kind: 'd', mode: 0750, uid: 1000, gid: 1000},
	{path: "owned/f", kind: 'f', mode: 0600, uid: 1000, gid: 1000, data: "owned\n"},
	{path: "sticky", kind: 'd', mode: 01777},
	{path: "locked", kind: 'd', mode: noPerm},
	{path: "locked/f", kind: 'f', data: "in locked dir\n"},
	{path: "xdir", kind: 'd', xattrs: map[string]string{"user.dir": "yes", "trusted.dir": "t"}},
	{path: "both", kind: 'd'},
	{path: "both/l", kind: 'f', data: "both/l base\n"},
}

// midLayer is the upper lower layer: it hides parts of baseLayer with
// whiteouts and an opaque directory.
var midLayer = layerSpec{
	{path: "hidden", kind: 'w'},
	{path: "gone", kind: 'w'},
	{path: "shadow.txt", kind: 'f', data: "mid shadow\n"},
	{path: "shadow2.txt", kind: 'f', data: "mid shadow2\n"},
	{path: "mid.txt", kind: 'f', mode: 0640, data: "mid only\n", xattrs: map[string]string{"user.m": "1"}},
	{path: "d", kind: 'd'},
	{path: "d/g", kind: 'w'},
	{path: "d/mid", kind: 'f', data: "d/mid\n"},
	{path: "d/sub", kind: 'd', mode: 0750, uid: 1000, gid: 1000},
	{path: "d/sub/s2", kind: 'f', data: "s2 mid\n"},
	{path: "opq", kind: 'd', opaque: true},
	{path: "opq/above", kind: 'f', data: "above\n"},
	{path: "opq/both", kind: 'f', data: "mid version\n"},
	{path: "wdir", kind: 'd'},
	{path: "wdir/x", kind: 'w'},
	{path: "midlink", kind: 'l', data: "d/mid"},
	{path: "mdir", kind: 'd'},
	{path: "mdir/m", kind: 'f', data: "m\n"},
}

// upperLayer is the initial upper: as kernel overlayfs would have left it.
var upperLayer = layerSpec{
	{path: "up.txt", kind: 'f', data: "upper only\n"},
	{path: "shadow2.txt", kind: 'f', data: "upper shadow2\n"},
	{path: "upw.txt", kind: 'w'},
	{path: "updir", kind: 'd'},
	{path: "updir/x", kind: 'f', data: "updir/x\n"},
	{path: "updir/y", kind: 'd'},
	{path: "both", kind: 'd'},
	{path: "both/u", kind: 'f', data: "both/u upper\n"},
}

// stackSpec is the layers of a union: lowers top first, then the upper.
type stackSpec struct {
	lowers []layerSpec
	upper  layerSpec
}

// defaultStack is the fixture most differential tests run on.
var defaultStack = stackSpec{lowers: []layerSpec{midLayer, baseLayer}, upper: upperLayer}

// buildLayer creates the entries of spec under root, which must exist.
// Times are set last, deepest first, so that creating children does not
// disturb their parent's mtime.
func buildLayer(t testing.TB, root string, spec layerSpec) {
	t.Helper()
	ents := append(layerSpec(nil), spec...)
	sort.SliceStable(ents, func(i, j int) bool { return ents[i].path < ents[j].path })
	for _, e := range ents {
		if err := buildEntry(root, e); err != nil {
			t.Fatalf("fixture %s: %v", e.path, err)
		}
	}
	// Modes and owners of directories go on after their children exist (a
	// 0000 or 0500 directory would not take children otherwise, were we
	// not root, and setgid directories would pass their group on).
	for i := len(ents) - 1; i >= 0; i-- {
		e := ents[i]
		p := filepath.Join(root, e.path)
		if e.kind == 'd' {
			if err := finishMeta(p, e, 0755); err != nil {
				t.Fatalf("fixture %s: %v", e.path, err)
			}
		}
	}
	// Times, deepest first.
	byDepth := append(layerSpec(nil), ents...)
	sort.SliceStable(byDepth, func(i, j int) bool {
		return strings.Count(byDepth[i].path, "/") > strings.Count(byDepth[j].path, "/")
	})
	for _, e := range byDepth {
		// The time depends on the path alone, so that the same entry
		// in two differently built layers gets the same time.
		h := fnv.New32a()
		h.Write([]byte(e.path))
		ts := fixtureEpoch.Add(time.Duration(h.Sum32()%3600) * time.Second)
		tv := []unix.Timespec{unix.NsecToTimespec(ts.UnixNano()), unix.NsecToTimespec(ts.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(root, e.path), tv, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatalf("fixture times %s: %v", e.path, err)
		}
	}
	ts := unix.NsecToTimespec(fixtureEpoch.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, root, []unix.Timespec{ts, ts}, 0); err != nil {
		t.Fatal(err)
	}
}

func buildEntry(root string, e fent) error {
	p := filepath.Join(root, e.path)
	switch e.kind {
	case 'd':
		if err := os.Mkdir(p, 0755); err != nil {
			return err
		}
		if e.opaque {
			if err := unix.Lsetxattr(p, "trusted.overlay.opaque", []byte("y"), 0); err != nil {
				return err
			}
		}
		return setXattrs(p, e)
	case 'f':
		if err := os.WriteFile(p, []byte(e.data), 0600); err != nil {
			return err
		}
		return finishMeta(p, e, 0644)
	case 's':
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0600)
		if err != nil {
			return err
		}
		// Data at the start, a hole, data straddling a block at the
		// middle, a hole, and a short tail.
		_, err1 := f.WriteAt([]byte(e.data), 0)
		_, err2 := f.WriteAt([]byte(e.data), e.size/2-2)
		_, err3 := f.WriteAt([]byte("tail"), e.size-4)
		err4 := f.Close()
		for _, err := range []error{err1, err2, err3, err4} {
			if err != nil {
				return err
			}
		}
		return finishMeta(p, e, 0644)
	case 'l':
		if err := os.Symlink(e.data, p); err != nil {
			return err
		}
		if err := os.Lchown(p, e.uid, e.gid); err != nil {
			return err
		}
		return setXattrs(p, e)
	case 'p':
		if err := unix.Mkfifo(p, 0600); err != nil {
			return err
		}
		return finishMeta(p, e, 0644)
	case 'c':
		if err := unix.Mknod(p, unix.S_IFCHR|0600, int(e.rdev)); err != nil {
			return err
		}
		return finishMeta(p, e, 0644)
	case 'w':
		return unix.Mknod(p, unix.S_IFCHR, 0)
	case 'h':
		return os.Link(filepath.Join(root, e.data), p)
	}
	return fmt.Errorf("unknown fixture kind %q", e.kind)
}

// finishMeta sets owner, then mode (chown clears setuid), then xattrs.
func finishMeta(p string, e fent, def uint32) error {
	mode := e.mode
	if mode == 0 {
		mode = def
	}
	mode &^= noPerm
	if err := os.Lchown(p, e.uid, e.gid); err != nil {
		return err
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, p, mode, 0); err != nil {
		return err
	}
	if e.kind != 'd' {
		return setXattrs(p, e)
	}
	return nil
}

func setXattrs(p string, e fent) error {
	for k, v := range e.xattrs {
		if err := unix.Lsetxattr(p, k, []byte(v), 0); err != nil {
			return fmt.Errorf("setxattr %s: %w", k, err)
		}
	}
	return nil
}
