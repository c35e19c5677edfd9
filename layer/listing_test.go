package layer

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tree listings compare unpacked trees and tar streams: one line per
// entry, "path type mode uid:gid detail xattrs [link-group]", sorted by
// path, mtimes left out (tools differ). The format follows the research
// notes' treelist.py: file data as size and sha256, symlink targets,
// device numbers, xattrs in hex (but not the union's *.overlay.* ones nor
// security.selinux), and for names of one inode the smallest of its
// visible names.

// applyEntry is one file of a listing before it is printed.
type applyEntry struct {
	path, kind, detail string
	mode               uint32
	uid, gid           int
	xattrs             []string
	group              string // the inode's key, for hard link groups
}

// applyListed prints entries sorted by path, with hard link groups of at
// least two names marked by the group's smallest name.
func applyListed(es []applyEntry) []string {
	members := map[string][]string{}
	for _, e := range es {
		if e.group != "" {
			members[e.group] = append(members[e.group], e.path)
		}
	}
	slices.SortFunc(es, func(a, b applyEntry) int { return strings.Compare(a.path, b.path) })
	var out []string
	for _, e := range es {
		l := fmt.Sprintf("%q %s %04o %d:%d", e.path, e.kind, e.mode, e.uid, e.gid)
		if e.detail != "" {
			l += " " + e.detail
		}
		for _, x := range e.xattrs {
			l += " " + x
		}
		if m := members[e.group]; len(m) > 1 {
			l += " link=" + slices.Min(m)
		}
		out = append(out, l)
	}
	return out
}

// applyListedXattr reports whether a listing shows the xattr name.
func applyListedXattr(name string) bool {
	return !strings.Contains(name, ".overlay.") && !strings.HasPrefix(name, "security.selinux")
}

func applyDigest(data []byte) string {
	sum := sha256.Sum256(data)
	return fmt.Sprintf("size=%d sha256=%s", len(data), hex.EncodeToString(sum[:8]))
}

// applyTreeList lists the tree at root (root itself left out).
func applyTreeList(t testing.TB, root string) []string {
	t.Helper()
	var es []applyEntry
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := applyEntry{path: rel, mode: st.Mode & 0o7777, uid: int(st.Uid), gid: int(st.Gid)}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.kind, e.detail = "f", applyDigest(data)
		case unix.S_IFDIR:
			e.kind = "d"
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.kind, e.detail = "l", "target="+target
		case unix.S_IFCHR, unix.S_IFBLK:
			e.kind = "c"
			if st.Mode&unix.S_IFMT == unix.S_IFBLK {
				e.kind = "b"
			}
			e.detail = fmt.Sprintf("rdev=%d,%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		case unix.S_IFIFO:
			e.kind = "p"
		default:
			e.kind = "s"
		}
		if e.kind != "d" && st.Nlink > 1 {
			e.group = fmt.Sprintf("%d:%d", st.Dev, st.Ino)
		}
		e.xattrs = applyDiskXattrs(t, p)
		es = append(es, e)
		return nil
	})
	if err != nil {
		t.Fatalf("list %s: %v", root, err)
	}
	return applyListed(es)
}

// applyDiskXattrs returns "name=hex" for the listed xattrs of p.
func applyDiskXattrs(t testing.TB, p string) []string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var out []string
	for _, x := range strings.Split(string(buf[:n]), "\x00") {
		if x == "" || !applyListedXattr(x) {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, x, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, x, err)
		}
		out = append(out, x+"="+hex.EncodeToString(v[:m]))
	}
	slices.Sort(out)
	return out
}

// applyTarList lists the plain (whiteout-free) tar r as applyTreeList
// lists the tree it would unpack to.
func applyTarList(t testing.TB, r io.Reader) []string {
	t.Helper()
	tr := tar.NewReader(r)
	var es []applyEntry
	byPath := map[string]int{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		p := strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/")
		e := applyEntry{path: p, mode: uint32(hdr.Mode) & 0o7777, uid: hdr.Uid, gid: hdr.Gid}
		switch hdr.Typeflag {
		case tar.TypeReg:
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("read %s: %v", hdr.Name, err)
			}
			e.kind, e.detail = "f", applyDigest(data)
		case tar.TypeDir:
			e.kind = "d"
		case tar.TypeSymlink:
			e.kind, e.detail = "l", "target="+hdr.Linkname
		case tar.TypeChar, tar.TypeBlock:
			e.kind = "c"
			if hdr.Typeflag == tar.TypeBlock {
				e.kind = "b"
			}
			e.detail = fmt.Sprintf("rdev=%d,%d", hdr.Devmajor, hdr.Devminor)
		case tar.TypeFifo:
			e.kind = "p"
		case tar.TypeLink:
			i, ok := byPath[hdr.Linkname]
			if !ok {
				t.Fatalf("%s: link to unknown %s", hdr.Name, hdr.Linkname)
			}
			target := &es[i]
			if target.group == "" {
				target.group = target.path
			}
			e = *target
			e.path = p
		default:
			t.Fatalf("%s: unexpected type %q", hdr.Name, hdr.Typeflag)
		}
		if hdr.Typeflag != tar.TypeLink {
			for k, v := range hdr.PAXRecords {
				if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && applyListedXattr(x) {
					e.xattrs = append(e.xattrs, x+"="+hex.EncodeToString([]byte(v)))
				}
			}
			slices.Sort(e.xattrs)
		}
		byPath[p] = len(es)
		es = append(es, e)
	}
	return applyListed(es)
}

// applyDiff fails t with a line diff when got and want differ.
func applyDiff(t testing.TB, what string, got, want []string) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	var b strings.Builder
	for _, l := range want {
		if !slices.Contains(got, l) {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range got {
		if !slices.Contains(want, l) {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	t.Errorf("%s differ (-want +got):\n%s", what, b.String())
}

// apEnt is an entry of a test tar: a header and, for a regular file, data.
type apEnt struct {
	tar.Header
	Data string
}

// apTar builds an uncompressed PAX tar of es (mtime 2020-01-02 unless set).
func apTar(t testing.TB, es ...apEnt) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := e.Header
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Data))
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
		}
		if h.Format == tar.FormatUnknown {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if _, err := io.WriteString(tw, e.Data); err != nil {
			t.Fatalf("tar data %s: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func apDir(name string, mode int64) apEnt {
	return apEnt{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}

func apFile(name string, mode int64, data string) apEnt {
	return apEnt{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, Data: data}
}

func apSymlink(name, target string) apEnt {
	return apEnt{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func apLink(name, target string) apEnt {
	return apEnt{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}}
}

// apWhiteout is the OCI whiteout of the path p.
func apWhiteout(p string) apEnt {
	dir, base := filepath.Split(p)
	return apFile(dir+".wh."+base, 0, "")
}

// apOwned returns e owned by uid:gid.
func apOwned(e apEnt, uid, gid int) apEnt {
	e.Uid, e.Gid = uid, gid
	return e
}

// apXattrs returns e with the xattrs kv (name, value, ...).
func apXattrs(e apEnt, kv ...string) apEnt {
	e.PAXRecords = map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		e.PAXRecords["SCHILY.xattr."+kv[i]] = kv[i+1]
	}
	return e
}
