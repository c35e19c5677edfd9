package integration

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Helpers of the commit tests (commit_test.go, commit_crash_test.go).

// lab is the teaching lab: copies of examples/layers/{base,extra} as the
// lowers (base on top), an empty upper and a mount point, all in a fresh
// temporary directory. work is the default workdir of the upper.
type lab struct {
	root, base, extra, upper, merged, work string
}

func (l *lab) lowers() string { return l.base + ":" + l.extra }

// newLab builds a lab in a temporary directory. Besides the example files,
// base gets etc/issue, a file no change of the lab touches.
func newLab(t testing.TB) *lab { return newLabIn(t, t.TempDir()) }

// newLabIn builds a lab in the existing, empty directory root.
func newLabIn(t testing.TB, root string) *lab {
	t.Helper()
	l := &lab{
		root:   root,
		base:   filepath.Join(root, "base"),
		extra:  filepath.Join(root, "extra"),
		upper:  filepath.Join(root, "upper"),
		merged: filepath.Join(root, "merged"),
		work:   filepath.Join(root, ".upper.work"),
	}
	for _, name := range []string{"base", "extra"} {
		out, err := exec.Command("cp", "-a", filepath.Join("..", "examples", "layers", name), root).CombinedOutput()
		if err != nil {
			t.Fatalf("copy examples/layers/%s: %v: %s", name, err, out)
		}
	}
	for _, d := range []string{l.upper, l.merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(l.base, "etc", "issue"), []byte("Unionmount lab\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return l
}

// tmpfsDir mounts a tmpfs of size bytes on a new temporary directory and
// unmounts it in t.Cleanup, after the mounts the test makes later. Tests
// that create tens of thousands of files use it: the disk here spends
// seconds on what tmpfs does in a fraction of one, creating and removing.
func tmpfsDir(t testing.TB, size int64) string {
	t.Helper()
	needRoot(t)
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// um runs the unionmount binary with extra environment variables and
// returns its stdout and stderr apart.
func um(env []string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// idRE is what `unionmount commit` prints on stdout.
var idRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}\n$`)

// heldRE finds the "writers held" figure on commit's stderr.
var heldRE = regexp.MustCompile(`writers held (\S+)`)

// commitMount runs `unionmount commit ARGS...`, checks the form of its
// output and returns the layer id (without the newline) and stderr.
func commitMount(t testing.TB, env []string, args ...string) (id, stderr string) {
	t.Helper()
	out, errOut, err := um(env, append([]string{"commit"}, args...)...)
	if err != nil {
		t.Fatalf("unionmount commit %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	if !idRE.MatchString(out) {
		t.Fatalf("unionmount commit %s printed %q on stdout, want one line sha256:<64 hex>", strings.Join(args, " "), out)
	}
	if !heldRE.MatchString(errOut) {
		t.Errorf("unionmount commit: stderr %q does not say how long writers were held", errOut)
	}
	return strings.TrimSpace(out), errOut
}

// fullListing describes every path of the tree at root in one string:
// the snapshot fields (type, mode, owner, size, link count, content,
// symlink target, xattrs, d_type) and the exact inode number and mtime.
func fullListing(t testing.TB, root string) map[string]string {
	t.Helper()
	s, err := takeSnapshot(root, snapMerged)
	if err != nil {
		t.Fatalf("list %s: %v", root, err)
	}
	out := map[string]string{}
	for p, o := range s {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, p), &st); err != nil {
			t.Fatalf("list %s: %v", root, err)
		}
		out[p] = fmt.Sprintf("%s %04o %d:%d size=%d nlink=%d ino=%d mtime=%d.%09d data=%s target=%q xattrs=[%s] dtype=%s dino=%v",
			o.typ, o.perm, o.uid, o.gid, o.size, o.nlink, st.Ino, st.Mtim.Sec, st.Mtim.Nsec,
			o.data, o.target, o.xattrs, o.dtype, o.dinoOK)
	}
	return out
}

// listingDiffs lists how got differs from want, one line per path.
func listingDiffs(got, want map[string]string) []string {
	var diffs []string
	seen := map[string]bool{}
	for p, w := range want {
		seen[p] = true
		if g, ok := got[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("/%s: missing, want %s", p, w))
		} else if g != w {
			diffs = append(diffs, fmt.Sprintf("/%s:\n   got  %s\n   want %s", p, g, w))
		}
	}
	for p, g := range got {
		if !seen[p] {
			diffs = append(diffs, fmt.Sprintf("/%s: got %s, want absent", p, g))
		}
	}
	sort.Strings(diffs)
	return diffs
}

// checkListing reports the differences of got from want under heading.
func checkListing(t testing.TB, heading string, got, want map[string]string) {
	t.Helper()
	d := listingDiffs(got, want)
	if len(d) > maxDiffLines {
		d = append(d[:maxDiffLines], fmt.Sprintf("... and %d more", len(d)-maxDiffLines))
	}
	if len(d) > 0 {
		t.Errorf("%s:\n%s", heading, strings.Join(d, "\n"))
	}
}

// layerState is everything about a layer directory that must not change
// once it is committed, in one comparable string: per path, the type,
// mode, owner, inode and link count, size, mtime and ctime (which any
// change of data, metadata or xattrs bumps), device number, symlink
// target, content hash and xattrs. (lowerState records the same without
// inode numbers, but with a 1 MiB buffer per file it is too slow for
// layers of thousands of small files.)
func layerState(t testing.TB, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s: mode=%o uid=%d gid=%d ino=%d nlink=%d size=%d mtime=%d.%09d ctime=%d.%09d rdev=%d",
			rel, st.Mode, st.Uid, st.Gid, st.Ino, st.Nlink, st.Size, st.Mtim.Sec, st.Mtim.Nsec,
			st.Ctim.Sec, st.Ctim.Nsec, st.Rdev)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " sha256=%x", sha256.Sum256(data))
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " -> %q", target)
		}
		names, err := listXattr(p)
		if err != nil {
			return err
		}
		for _, n := range names {
			v, err := getXattr(p, n)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " %s=%q", n, v)
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatalf("state of layer %s: %v", dir, err)
	}
	return b.String()
}

// firstDiffLine returns the first line where a and b differ, for messages.
func firstDiffLine(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("before %q, after %q", x, y)
		}
	}
	return ""
}

// dirNames lists the names in dir, sorted; none when it does not exist.
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// layersTable runs `unionmount layers MERGED` and returns its rows
// (header left out) split into fields: LAYER ID FILES SIZE DATE TIME
// MESSAGE... DIRECTORY.
func layersTable(t testing.TB, merged string) [][]string {
	t.Helper()
	out, errOut, err := um(nil, "layers", merged)
	if err != nil {
		t.Fatalf("unionmount layers %s: %v\n%s%s", merged, err, out, errOut)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "LAYER") {
		t.Fatalf("unionmount layers: no header:\n%s", out)
	}
	var rows [][]string
	for _, l := range lines[1:] {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

// layerRow checks one row of layersTable: its role, short id ("" for any),
// message (joined fields between the time and the directory) and
// directory.
func layerRow(t testing.TB, row []string, role, id, msg, dir string) {
	t.Helper()
	if len(row) < 8 {
		t.Errorf("layers row %q: too few fields", row)
		return
	}
	gotMsg := strings.Join(row[6:len(row)-1], " ")
	if row[0] != role || (id != "" && row[1] != id) || gotMsg != msg || row[len(row)-1] != dir {
		t.Errorf("layers row %q: want role %s, id %q, message %q, directory %s", row, role, id, msg, dir)
	}
}

// shortOf is the 12-digit short form of a layer id.
func shortOf(id string) string { return strings.TrimPrefix(id, "sha256:")[:12] }
