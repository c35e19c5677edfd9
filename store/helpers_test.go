package store

import (
	"archive/tar"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// newStore opens a store in a fresh temporary directory.
func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// needTool skips the test when an external tool is missing.
func needTool(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install %s; scripts/ installs it for CI)", tool, tool)
		}
	}
}

func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + why)
	}
}

// run runs a command, failing the test with its output on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// snapshot describes every file of a directory tree, contents included,
// to compare a store before and after something that must not change it.
func snapshot(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == lockFile {
			return nil
		}
		fmt.Fprintf(&b, "%s %v %d", rel, fi.Mode(), fi.Size())
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " %x", sha256.Sum256(data))
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// treeList describes a tree as a filesystem: path, type, permissions,
// owner, data digest or link target or device, xattrs (without the
// overlay namespaces'), and the first name of a file with several. Times
// are left out: tools differ there.
func treeList(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	first := map[[2]uint64]string{}
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		line := fmt.Sprintf("%q %o %d:%d", rel, st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", sha256.Sum256(data))
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			line += fmt.Sprintf(" %d,%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		buf := make([]byte, 64<<10)
		if n, err := unix.Llistxattr(p, buf); err == nil {
			names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
			slices.Sort(names)
			for _, x := range names {
				if x == "" || strings.Contains(x, ".overlay.") || strings.HasPrefix(x, "security.selinux") || x == "user.rootlesscontainers" {
					continue
				}
				v := make([]byte, 64<<10)
				if vn, err := unix.Lgetxattr(p, x, v); err == nil {
					line += fmt.Sprintf(" %s=%x", x, v[:vn])
				}
			}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if f, ok := first[key]; ok {
				line += " link=" + f
			} else {
				first[key] = rel
			}
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// writeFile creates a file with parents.
func writeFile(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// whiteout deletes name from the layers below, in the upper dir: a 0/0
// character device as root, a ".wh." file otherwise (cow reads both).
func whiteout(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := unix.Mknod(filepath.Join(dir, name), unix.S_IFCHR, 0); err != nil {
			t.Fatal(err)
		}
		return
	}
	writeFile(t, filepath.Join(dir, ".wh."+name), "")
}

// opaque marks the directory dir opaque.
func opaque(t *testing.T, dir string) {
	t.Helper()
	x := "trusted.overlay.opaque"
	if os.Geteuid() != 0 {
		x = "user.overlay.opaque"
	}
	if err := unix.Lsetxattr(dir, x, []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
}

// extractTar unpacks a plain tar (an export) into dir with GNU tar, an
// independent reader, keeping owners, modes and xattrs.
func extractTar(t *testing.T, tarFile, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "tar", "-xpf", tarFile, "-C", dir, "--xattrs", "--xattrs-include=*", "--numeric-owner")
}

// tarEntries lists the entry names of a tar file.
func tarEntries(t *testing.T, r io.Reader) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
	}
}

// mergedView mounts kernel overlayfs read-only over lowers (top-most
// first), an independent reader of cow's lower format, and returns the
// mount point; it is unmounted at the end of the test.
func mergedView(t *testing.T, lowers []string) string {
	t.Helper()
	needRoot(t, "kernel overlayfs mounts")
	merged := t.TempDir()
	// One empty lower more: a mount without upper needs two lowers on
	// older kernels.
	opts := "lowerdir=" + strings.Join(append(slices.Clone(lowers), t.TempDir()), ":") + ",redirect_dir=off,index=off,metacopy=off"
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, opts); err != nil {
		t.Skipf("cannot mount kernel overlayfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(merged, 0); err != nil {
			t.Errorf("unmount %s: %v", merged, err)
		}
	})
	return merged
}

// checkMerged checks that the image's layers, stacked by kernel
// overlayfs, show the tree want.
func checkMerged(t *testing.T, s *Store, img *Image, want string) {
	t.Helper()
	lowers, err := s.Lowers(img, false)
	if err != nil {
		t.Fatal(err)
	}
	merged := mergedView(t, lowers)
	if got, want := treeList(t, merged), treeList(t, want); got != want {
		t.Errorf("merged view of %s:\n%s\nwant:\n%s", img.Name, got, want)
	}
}

// checkExport checks that Export of the image, unpacked by GNU tar, is the
// tree want.
func checkExport(t *testing.T, s *Store, img *Image, want string) {
	t.Helper()
	tmp := t.TempDir()
	f, err := os.Create(filepath.Join(tmp, "export.tar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := s.Export(img, f); err != nil {
		t.Fatal(err)
	}
	got := filepath.Join(tmp, "rootfs")
	extractTar(t, f.Name(), got)
	if got, want := treeList(t, got), treeList(t, want); got != want {
		t.Errorf("export of %s:\n%s\nwant:\n%s", img.Name, got, want)
	}
}
