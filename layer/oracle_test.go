package layer

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The oracle tests check Write against two independent implementations:
// kernel overlayfs writes the upper (real operations on a real overlay
// mount) and shows the merged view, and umoci, the strictest OCI unpacker
// (layers.md §8), applies our layers. The tree umoci unpacks must be the
// tree the kernel showed.

// requireOracle skips the test unless it can mount kernel overlayfs and
// run umoci.
func requireOracle(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: kernel overlay mounts, trusted.* xattrs, mknod, chown")
	}
	if _, err := exec.LookPath("umoci"); err != nil {
		t.Skip("needs umoci (apt-get install umoci) to unpack the image")
	}
}

// overlayMount mounts an overlay filesystem over lowers (top-most first)
// with a fresh upper, and returns the merged directory and the upper. With
// fuse, fuse-overlayfs serves it (as root it writes every opaque marker it
// knows), otherwise kernel overlayfs, with the features an upper walk
// cannot read (redirect_dir, metacopy) and the inode index off, whatever
// the kernel's defaults.
func overlayMount(t *testing.T, lowers []string, fuse bool) (merged, upper string) {
	t.Helper()
	base := t.TempDir()
	upper, work, merged := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lowers, ":"), upper, work)
	if fuse {
		if _, err := exec.LookPath("fuse-overlayfs"); err != nil {
			t.Skip("needs fuse-overlayfs (apt-get install fuse-overlayfs)")
		}
		// It daemonizes once the mount is up.
		if out, err := exec.Command("fuse-overlayfs", "-o", opts, merged).CombinedOutput(); err != nil {
			t.Skipf("cannot mount fuse-overlayfs: %v\n%s", err, out)
		}
	} else if err := unix.Mount("overlay", merged, "overlay", 0, opts+",redirect_dir=off,index=off,metacopy=off"); err != nil {
		t.Skipf("cannot mount kernel overlayfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(merged, 0); err != nil && err != unix.EINVAL {
			t.Errorf("unmount %s: %v", merged, err)
		}
	})
	return merged, upper
}

func oracleUnmount(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatalf("unmount %s: %v", dir, err)
	}
}

// ociImage writes an OCI image layout at dir, tagged tag, with the given
// uncompressed layers (base first); odd layers are stored gzip-compressed,
// even ones plain, so that umoci reads both media types.
func ociImage(t *testing.T, dir, tag string, layers [][]byte) {
	t.Helper()
	blob := func(b []byte) map[string]any {
		sum := fmt.Sprintf("%x", sha256.Sum256(b))
		p := filepath.Join(dir, "blobs", "sha256", sum)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return map[string]any{"digest": "sha256:" + sum, "size": len(b)}
	}
	var descs []map[string]any
	var diffIDs []string
	var history []map[string]any
	for i, l := range layers {
		diffIDs = append(diffIDs, fmt.Sprintf("sha256:%x", sha256.Sum256(l)))
		history = append(history, map[string]any{"created_by": fmt.Sprintf("layer %d", i)})
		if i%2 == 1 {
			var z bytes.Buffer
			zw := gzip.NewWriter(&z)
			if _, err := zw.Write(l); err != nil {
				t.Fatal(err)
			}
			if err := zw.Close(); err != nil {
				t.Fatal(err)
			}
			d := blob(z.Bytes())
			d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
			descs = append(descs, d)
		} else {
			d := blob(l)
			d["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
			descs = append(descs, d)
		}
	}
	js := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	config := blob(js(map[string]any{
		"architecture": "amd64", "os": "linux", "config": map[string]any{},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": diffIDs},
		"history": history,
	}))
	config["mediaType"] = "application/vnd.oci.image.config.v1+json"
	manifest := blob(js(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": config, "layers": descs,
	}))
	manifest["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
	manifest["annotations"] = map[string]string{"org.opencontainers.image.ref.name": tag}
	index := js(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []any{manifest},
	})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
}

// oracle builds the lowers (bottom-most first here, as layers stack), runs
// ops on a kernel overlay mount of them, commits every lower and the upper
// with Write, unpacks the image with umoci and compares its tree with the
// merged view the kernel showed.
func oracle(t *testing.T, fuse bool, bottomUp [][]writeOp, ops func(t *testing.T, merged string)) {
	t.Helper()
	var lowers []string // top-most first
	for _, l := range bottomUp {
		lowers = append([]string{buildLayer(t, l)}, lowers...)
	}
	merged, upper := overlayMount(t, lowers, fuse)
	_, before := treeLines(t, merged)
	ops(t, merged)
	want := treeList(t, merged)
	_, after := treeLines(t, merged)
	oracleUnmount(t, merged)
	checkChanges(t, upper, lowers, before, after)

	var layers [][]byte
	for i := len(lowers) - 1; i >= 0; i-- {
		b, _ := writeLayer(t, lowers[i], lowers[i+1:], Options{})
		layers = append(layers, b)
	}
	b, _ := writeLayer(t, upper, lowers, Options{})
	layers = append(layers, b)

	image, bundle := filepath.Join(t.TempDir(), "image"), filepath.Join(t.TempDir(), "bundle")
	ociImage(t, image, "test", layers)
	if out, err := exec.Command("umoci", "unpack", "--image", image+":test", bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	got := treeList(t, filepath.Join(bundle, "rootfs"))
	if got != want {
		t.Errorf("umoci unpacks a tree other than the kernel's merged view:\n%s", lineDiff(want, got))
		if testing.Verbose() {
			for i, l := range layers {
				var lines []string
				for _, e := range readLayer(t, l) {
					lines = append(lines, e.Name)
				}
				t.Logf("layer %d:\n%s", i, strings.Join(lines, "\n"))
			}
		}
	}
}

// checkChanges checks Changes of upper over lowers against the trees the
// kernel showed before and after the changes (treeLines): 'A' exactly for
// the paths only after, 'D' exactly for the paths only before whose parent
// is a directory after (the roots of deletions), 'C' for paths in both,
// at least for every one that the trees describe differently.
func checkChanges(t *testing.T, upper string, lowers []string, before, after map[string]string) {
	t.Helper()
	changes, err := Changes(upper, lowers)
	if err != nil {
		t.Fatalf("Changes: %v", err)
	}
	got := map[string]byte{}
	for _, c := range changes {
		rel := strings.TrimPrefix(c.Path, "/")
		if _, dup := got[rel]; dup {
			t.Errorf("Changes lists %s twice", c.Path)
		}
		got[rel] = c.Kind
	}
	isDir := func(rel string) bool {
		d := filepath.Dir(rel)
		return d == "." || strings.Contains(after[d], " dir ")
	}
	for rel, line := range after {
		_, was := before[rel]
		switch {
		case !was && got[rel] != 'A':
			t.Errorf("/%s: %q, want A (added)", rel, got[rel])
		case was && before[rel] != line && got[rel] != 'C':
			t.Errorf("/%s: %q, want C (changed)", rel, got[rel])
		case was && got[rel] != 0 && got[rel] != 'C':
			t.Errorf("/%s: %q, want C or nothing", rel, got[rel])
		}
	}
	for rel := range before {
		if _, is := after[rel]; is {
			continue
		}
		if isDir(rel) != (got[rel] == 'D') {
			t.Errorf("/%s deleted: Changes says %q", rel, got[rel])
		}
	}
	for rel, k := range got {
		_, was := before[rel]
		_, is := after[rel]
		if !was && !is {
			t.Errorf("Changes lists %c /%s, in neither tree", k, rel)
		}
	}
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	count := map[string]int{}
	for _, l := range strings.Split(want, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(got, "\n") {
		count[l]--
	}
	var b strings.Builder
	for _, l := range strings.Split(want, "\n") {
		if count[l] > 0 {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if count[l] < 0 {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	return b.String()
}

// oracleDo runs a step of an oracle scenario on the merged view; any failure
// ends the test.
func oracleDo(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// TestOracleUmoci covers the §7 rows with kernel overlayfs, then
// fuse-overlayfs, writing the upper.
func TestOracleUmoci(t *testing.T) {
	requireOracle(t)
	t.Run("kernel", func(t *testing.T) { oracleRows(t, false) })
	t.Run("fuse-overlayfs", func(t *testing.T) { oracleRows(t, true) })
}

func oracleRows(t *testing.T, fuse bool) {
	long := long255
	if fuse {
		// fuse-overlayfs keeps 4 bytes for ".wh." (statfs f_namemax 251).
		long = long255[:251]
	}
	base := []writeOp{
		fx.File("etc/passwd", "root:x:0:0\n"), fx.File("etc/group", "root:x:0\n"), fx.File("etc/app/conf", "c"),
		fx.File("bin/tool", "#!tool"), fx.Chmod("bin/tool", 0o755), fx.Link("bin/tool-link", "bin/tool"),
		fx.Symlink("bin/sh", "tool"),
		fx.File("usr/share/doc/a", "a"), fx.File("usr/share/doc/b", "b"), fx.File("usr/share/man/m", "m"),
		fx.File("dir2file/inner/f", "f"), fx.File("file2dir", "f"), fx.File("opq/one", "1"), fx.File("opq/sub/two", "2"),
		fx.File("del/d1/f", "f"), fx.File("del/d2", "f"), fx.File("lf", "lower file"), fx.File(long, "long"),
		fx.File("var/log/x", "x"), fx.Node("dev/null", unix.S_IFCHR|0o666, 1, 3), fx.Xattr("etc/passwd", "user.base", "b"),
	}
	middle := []writeOp{
		fx.Dir("usr"), fx.Dir("usr/share"), fx.Dir("usr/share/doc"), fx.Whiteout("usr/share/doc/b"),
		fx.Opaque("var"), fx.File("var/log/y", "y"), fx.File("etc/motd", "hi"),
	}
	oracle(t, fuse, [][]writeOp{base, middle}, func(t *testing.T, m string) {
		p := func(rel string) string { return filepath.Join(m, rel) }
		oracleDo(t, "modify", os.WriteFile(p("etc/passwd"), []byte("root:x:0:0\nu:x:1000:1000\n"), 0o644))
		oracleDo(t, "chmod", os.Chmod(p("etc/group"), 0o600))
		oracleDo(t, "rm file", os.Remove(p("etc/app/conf")))
		oracleDo(t, "rm -rf dir", os.RemoveAll(p("del")))
		oracleDo(t, "rm -rf opq", os.RemoveAll(p("opq")))
		oracleDo(t, "mkdir opq", os.Mkdir(p("opq"), 0o750))
		oracleDo(t, "recreate", os.WriteFile(p("opq/new"), []byte("n"), 0o644))
		oracleDo(t, "rm -rf usr/share", os.RemoveAll(p("usr/share")))
		oracleDo(t, "mkdir -p", os.MkdirAll(p("usr/share/doc/x"), 0o755))
		oracleDo(t, "rm -rf dir2file", os.RemoveAll(p("dir2file")))
		oracleDo(t, "dir to file", os.WriteFile(p("dir2file"), []byte("file now"), 0o644))
		oracleDo(t, "rm file2dir", os.Remove(p("file2dir")))
		oracleDo(t, "file to dir", os.MkdirAll(p("file2dir/sub"), 0o755))
		oracleDo(t, "write in it", os.WriteFile(p("file2dir/sub/x"), []byte("x"), 0o644))
		oracleDo(t, "symlink", os.Symlink(longTgt, p("etc/long-link")))
		oracleDo(t, "symlink", os.Symlink("../etc/passwd", p("bin/rel-link")))
		oracleDo(t, "ln lowerfile new", os.Link(p("lf"), p("lf-new")))
		oracleDo(t, "new file", os.WriteFile(p("h1"), []byte("linked"), 0o640))
		oracleDo(t, "hard link", os.Link(p("h1"), p("etc/h2")))
		oracleDo(t, "cap file", os.WriteFile(p("capbin"), []byte("bin"), 0o755))
		oracleDo(t, "setcap", unix.Setxattr(p("capbin"), "security.capability", []byte(capV2), 0))
		oracleDo(t, "user xattr", unix.Setxattr(p("etc/passwd"), "user.mine", []byte("1"), 0))
		oracleDo(t, "trusted xattr", unix.Setxattr(p("etc/group"), "trusted.mine", []byte("t"), 0))
		oracleDo(t, "owner file", os.WriteFile(p("owned"), []byte("o"), 0o644))
		oracleDo(t, "chown", os.Lchown(p("owned"), 3000000, 3000001))
		oracleDo(t, "mkfifo", unix.Mkfifo(p("fifo"), 0o640))
		oracleDo(t, "mknod c", unix.Mknod(p("dev/zero"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))))
		oracleDo(t, "mknod b", unix.Mknod(p("dev/loop9"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 9))))
		oracleDo(t, "rm dev", os.Remove(p("dev/null")))
		f, err := os.Create(p("sparse"))
		oracleDo(t, "sparse", err)
		_, err = f.WriteAt([]byte("tail"), 4<<20)
		oracleDo(t, "sparse", err)
		oracleDo(t, "sparse", f.Close())
		oracleDo(t, "long dir", os.MkdirAll(p(long100+"/"+long100), 0o755))
		oracleDo(t, "long name", os.WriteFile(p("etc/"+long), []byte("l"), 0o644))
		oracleDo(t, "rm long", os.Remove(p(long)))
		oracleDo(t, "non-UTF-8", os.WriteFile(p("caf\xe9\xff"), []byte("bytes"), 0o644))
		oracleDo(t, "create", os.WriteFile(p("tmp-gone"), nil, 0o644))
		oracleDo(t, "and delete", os.Remove(p("tmp-gone")))
		oracleDo(t, "rm middle's file", os.Remove(p("var/log/y")))
		oracleDo(t, "rename file", os.Rename(p("etc/motd"), p("etc/motd.old")))
	})
}

// TestOracleUmociRandom runs random operations on the kernel mount: files,
// directories, symlinks and hard links created, changed, renamed and
// removed, over a random base.
func TestOracleUmociRandom(t *testing.T) {
	requireOracle(t)
	for _, seed := range []uint64{1, 2, 3, 4} {
		fuse := seed%2 == 0
		t.Run(fmt.Sprintf("%d/fuse=%v", seed, fuse), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 42))
			name := func() string { return string(rune('a' + r.IntN(5))) }
			var base []writeOp
			for range 40 {
				p := name() + "/" + name() + "/" + name()
				switch r.IntN(4) {
				case 0:
					base = append(base, fx.Dir(p))
				case 1:
					base = append(base, fx.Symlink(p+"l", "../"+name()))
				default:
					base = append(base, fx.File(p, fmt.Sprint("base ", r.Int())))
				}
			}
			oracle(t, fuse, [][]writeOp{base}, func(t *testing.T, m string) {
				for range 60 {
					rel := name() + "/" + name()
					if r.IntN(2) == 0 {
						rel += "/" + name()
					}
					p := filepath.Join(m, rel)
					var err error
					switch r.IntN(9) {
					case 0:
						err = os.RemoveAll(p)
					case 1:
						err = os.Mkdir(p, 0o755)
					case 2, 3:
						err = os.WriteFile(p, []byte(fmt.Sprint("new ", r.Int())), 0o644)
					case 4:
						err = os.Symlink(name(), p)
					case 5:
						err = os.Link(filepath.Join(m, name()+"/"+name()), p)
					case 6:
						err = os.Chmod(p, os.FileMode(0o700+r.IntN(0o77)))
					case 7:
						// Rename within the view: files move (a copy-up),
						// lower directories cannot with redirect_dir off.
						err = os.Rename(p, filepath.Join(m, name()+"/"+name()))
					case 8:
						err = unix.Setxattr(p, "user.r", []byte(fmt.Sprint(r.Int())), 0)
					}
					_ = err // most random operations fail, as they would for a user
				}
			})
		})
	}
}
