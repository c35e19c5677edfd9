package layer

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// treeList describes the tree below root, one line per object in sorted
// path order, for comparing two trees that should be the same filesystem
// content (an unpacked image against a merged view): quoted path, type,
// permissions, owner, then size and sha256 of the data, the symlink target
// or the device number, the xattrs that belong to the file (not overlay
// filesystems' own, user.rootlesscontainers or security.selinux), and for
// a file that has several names in the tree, the first of them. Times,
// inode numbers and directory sizes are left out: tools differ there. The
// root itself is left out too.
func treeList(t testing.TB, root string) string {
	t.Helper()
	paths, lines := treeLines(t, root)
	var b strings.Builder
	for _, p := range paths {
		b.WriteString(lines[p])
		b.WriteByte('\n')
	}
	return b.String()
}

// treeLines is treeList as the paths in order and their lines.
func treeLines(t testing.TB, root string) (paths []string, lines map[string]string) {
	t.Helper()
	type obj struct {
		rel  string
		line string
		key  [2]uint64
	}
	var objs []obj
	groups := map[[2]uint64][]string{}
	var walk func(rel string)
	walk = func(rel string) {
		ents, err := os.ReadDir(filepath.Join(root, rel))
		if err != nil {
			t.Fatalf("tree list: %v", err)
		}
		names := make([]string, len(ents))
		for i, e := range ents {
			names[i] = e.Name()
		}
		slices.Sort(names)
		for _, n := range names {
			r := filepath.Join(rel, n)
			p := filepath.Join(root, r)
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				t.Fatalf("tree list: %v", err)
			}
			line := fmt.Sprintf("%q %s %04o %d:%d", r, typeName(st.Mode), st.Mode&0o7777, st.Uid, st.Gid)
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				f, err := os.Open(p)
				if err != nil {
					t.Fatalf("tree list: %v", err)
				}
				h := sha256.New()
				n, err := io.Copy(h, f)
				f.Close()
				if err != nil {
					t.Fatalf("tree list: %v", err)
				}
				line += fmt.Sprintf(" size=%d sha256=%x", n, h.Sum(nil)[:8])
			case unix.S_IFLNK:
				target, err := os.Readlink(p)
				if err != nil {
					t.Fatalf("tree list: %v", err)
				}
				line += " -> " + strconv.Quote(target)
			case unix.S_IFCHR, unix.S_IFBLK:
				line += fmt.Sprintf(" rdev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
			}
			line += treeXattrs(t, p)
			key := [2]uint64{st.Dev, st.Ino}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
				groups[key] = append(groups[key], r)
			}
			objs = append(objs, obj{rel: r, line: line, key: key})
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				walk(r)
			}
		}
	}
	walk("")
	lines = map[string]string{}
	for _, o := range objs {
		paths = append(paths, o.rel)
		lines[o.rel] = o.line
		// Only names that share the inode within the tree count: a
		// lower's link count says nothing about the merged view.
		if g := groups[o.key]; len(g) > 1 {
			lines[o.rel] += fmt.Sprintf(" links=%q", g[0])
		}
	}
	return paths, lines
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFCHR:
		return "chr"
	case unix.S_IFBLK:
		return "blk"
	case unix.S_IFSOCK:
		return "socket"
	}
	return fmt.Sprintf("type%o", mode&unix.S_IFMT)
}

// treeXattrs renders the xattrs of p that treeList compares.
func treeXattrs(t testing.TB, p string) string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return ""
	}
	var out []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" || strings.Contains(name, ".overlay.") || strings.HasPrefix(name, "user.fuseoverlayfs.") ||
			name == "user.rootlesscontainers" || name == "security.selinux" {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("tree list: getxattr %s %s: %v", p, name, err)
		}
		out = append(out, fmt.Sprintf("%s=%x", name, v[:m]))
	}
	slices.Sort(out)
	if len(out) == 0 {
		return ""
	}
	return " xattrs[" + strings.Join(out, " ") + "]"
}
