package integration

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The container story of issue 3, end to end with the real tools: import a
// rootfs as an image, mount it in a container layer, change it, commit it
// as a new image, and check that umoci, skopeo (docker-archive,
// oci-archive, containers-storage) and a real registry all see exactly the
// tree the mount showed, and that a second store that pulled the image
// mounts the identical tree.

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install %s)", tool, tool)
		}
	}
}

// umStore runs unionmount with the store dir in its environment.
func umStore(t *testing.T, store string, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "UNIONMOUNT_STORE="+store, "SOURCE_DATE_EPOCH=1700000000")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("unionmount %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// tool runs an external command and fails the test on error.
func tool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// imageListing describes a tree as image tools reproduce it: path, type,
// mode, owner, size and content hash, symlink target, device number,
// xattrs (not the overlay's own or umoci's bookkeeping), and which paths
// share an inode. Times are left out: the tools differ there.
func imageListing(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	first := map[[2]uint64]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %s %04o %d:%d", rel, typeName(st.Mode), st.Mode&0o7777, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %d %x", len(data), sha256.Sum256(data))
			key := [2]uint64{st.Dev, st.Ino}
			if st.Nlink > 1 {
				if f, ok := first[key]; ok {
					line += " link=" + f
				} else {
					first[key] = rel
				}
			}
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			line += fmt.Sprintf(" %d,%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		names, _ := listXattr(p)
		sort.Strings(names)
		for _, n := range names {
			if strings.Contains(n, ".overlay.") || n == "user.rootlesscontainers" || strings.HasPrefix(n, "security.selinux") {
				continue
			}
			v, _ := getXattr(p, n)
			line += fmt.Sprintf(" %s=%q", n, v)
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameListing(t *testing.T, what string, got, want []string) {
	t.Helper()
	g, w := strings.Join(got, "\n"), strings.Join(want, "\n")
	if g != w {
		t.Errorf("%s differs from the mount:\n--- got\n%s\n--- want\n%s", what, g, w)
	}
}

// rootfsTar writes a small rootfs tarball: dirs, files, a symlink, a hard
// link and a file with a capability.
func rootfsTar(t *testing.T, path string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Unix(1600000000, 0)
	add := func(h *tar.Header, data string) {
		h.ModTime = mt
		h.Format = tar.FormatPAX
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if data != "" {
			tw.Write([]byte(data))
		}
	}
	for _, d := range []string{"bin/", "etc/", "etc/app/", "usr/", "usr/share/", "usr/share/doc/", "var/", "var/log/"} {
		add(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, "")
	}
	add(&tar.Header{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o755}, "#!/bin/sh\necho tool\n")
	add(&tar.Header{Name: "bin/tool2", Typeflag: tar.TypeLink, Linkname: "bin/tool", Mode: 0o755}, "")
	add(&tar.Header{Name: "bin/ping", Typeflag: tar.TypeReg, Mode: 0o755,
		PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}}, "ping")
	add(&tar.Header{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644}, "base\n")
	add(&tar.Header{Name: "etc/app/config", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 1000}, "x=1\n")
	add(&tar.Header{Name: "etc/app/old", Typeflag: tar.TypeReg, Mode: 0o644}, "old\n")
	add(&tar.Header{Name: "usr/share/doc/README", Typeflag: tar.TypeReg, Mode: 0o644}, "docs\n")
	add(&tar.Header{Name: "var/log/syslog", Typeflag: tar.TypeReg, Mode: 0o640}, "log\n")
	add(&tar.Header{Name: "etc/localtime", Typeflag: tar.TypeSymlink, Linkname: "/usr/share/zoneinfo/UTC"}, "")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startRegistry starts Debian's docker-registry on 127.0.0.1 and stops it
// by PID when the test ends.
func startRegistry(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	cfg := fmt.Sprintf("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s/data\nhttp:\n  addr: 127.0.0.1:%d\n", dir, port)
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("docker-registry", "serve", filepath.Join(dir, "config.yml"))
	logf, _ := os.Create(filepath.Join(dir, "log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr
		}
		time.Sleep(50 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "log"))
	t.Fatalf("registry did not start on %s:\n%s", addr, log)
	return ""
}

func TestImageStory(t *testing.T) {
	needRoot(t) // devices, capabilities, containers-storage
	needFUSE(t)
	needTools(t, "skopeo", "umoci", "docker-registry")
	root := t.TempDir()
	store := filepath.Join(root, "store")
	rootfs := filepath.Join(root, "rootfs.tar")
	rootfsTar(t, rootfs)

	// docker import, then a container on the image.
	umStore(t, store, "import", rootfs, "base:1")
	merged := filepath.Join(root, "merged")
	os.Mkdir(merged, 0o755)
	out, err := func() (string, error) {
		cmd := exec.Command(binary, "--image", "base:1", merged)
		cmd.Env = append(os.Environ(), "UNIONMOUNT_STORE="+store)
		b, err := cmd.CombinedOutput()
		return string(b), err
	}()
	if err != nil {
		t.Fatalf("mount --image: %v\n%s", err, out)
	}
	t.Cleanup(func() { unmount(t, merged) })

	// Changes of every kind the layer format carries.
	m := func(p string) string { return filepath.Join(merged, p) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(m("etc/hostname"), []byte("container\n"), 0o644))
	must(os.Remove(m("var/log/syslog")))
	must(os.RemoveAll(m("etc/app")))
	must(os.Mkdir(m("etc/app"), 0o750))
	must(os.WriteFile(m("etc/app/config"), []byte("x=2\n"), 0o600))
	must(os.MkdirAll(m("opt/new/deep"), 0o755))
	must(os.WriteFile(m("opt/new/deep/file"), []byte("new"), 0o644))
	must(os.Link(m("opt/new/deep/file"), m("opt/new/link")))
	must(os.Symlink("../etc/hostname", m("opt/hostname")))
	must(unix.Mkfifo(m("opt/fifo"), 0o600))
	must(unix.Mknod(m("opt/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(os.Chmod(m("bin/tool"), 0o700))
	must(unix.Setxattr(m("usr/share/doc/README"), "user.note", []byte("kept"), 0))
	must(os.RemoveAll(m("usr/share/doc")))
	want := imageListing(t, merged)

	id := strings.TrimSpace(umStore(t, store, "commit", merged, "--tag", "app:1", "-m", "the changes"))
	if !strings.HasPrefix(id, "sha256:") {
		t.Fatalf("commit printed %q, want a layer id", id)
	}
	sameListing(t, "the mount after the commit", imageListing(t, merged), want)

	t.Run("umoci", func(t *testing.T) {
		bundle := filepath.Join(t.TempDir(), "bundle")
		tool(t, "umoci", "unpack", "--image", store+":app:1", bundle)
		sameListing(t, "umoci unpack", imageListing(t, filepath.Join(bundle, "rootfs")), want)
	})

	t.Run("save", func(t *testing.T) {
		dir := t.TempDir()
		a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
		umStore(t, store, "save", "app:1", "-o", a)
		umStore(t, store, "save", "app:1", "-o", b)
		da, _ := os.ReadFile(a)
		db, _ := os.ReadFile(b)
		if !bytes.Equal(da, db) {
			t.Error("saving the same image twice gave different files")
		}
		tool(t, "skopeo", "--insecure-policy", "copy", "docker-archive:"+a, "oci:"+filepath.Join(dir, "fromdocker")+":app")
		tool(t, "skopeo", "--insecure-policy", "copy", "oci-archive:"+a, "oci:"+filepath.Join(dir, "fromoci")+":app")
		bundle := filepath.Join(dir, "bundle")
		tool(t, "umoci", "unpack", "--image", filepath.Join(dir, "fromdocker")+":app", bundle)
		sameListing(t, "umoci unpack of the docker-archive", imageListing(t, filepath.Join(bundle, "rootfs")), want)

		// load into an empty store, then mount it.
		store3 := filepath.Join(dir, "store3")
		umStore(t, store3, "load", "-i", a)
		mnt := filepath.Join(dir, "m")
		os.Mkdir(mnt, 0o755)
		umStore(t, store3, "--image", "app:1", "--read-only", mnt)
		t.Cleanup(func() { unmount(t, mnt) })
		sameListing(t, "a mount of the loaded image", imageListing(t, mnt), want)
	})

	t.Run("containers-storage", func(t *testing.T) {
		cs := t.TempDir()
		tool(t, "skopeo", "--insecure-policy", "copy", "oci:"+store+":app:1",
			fmt.Sprintf("containers-storage:[vfs@%s/root+%s/run]localhost/app:1", cs, cs))
	})

	t.Run("registry", func(t *testing.T) {
		addr := startRegistry(t)
		tool(t, "skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false",
			"oci:"+store+":app:1", "docker://"+addr+"/demo/app:1")
		store2 := filepath.Join(t.TempDir(), "store2")
		os.MkdirAll(store2, 0o755)
		tool(t, "skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
			"docker://"+addr+"/demo/app:1", "oci:"+store2+":app:1")
		mnt := filepath.Join(t.TempDir(), "m")
		os.Mkdir(mnt, 0o755)
		umStore(t, store2, "--image", "app:1", "--read-only", mnt)
		t.Cleanup(func() { unmount(t, mnt) })
		sameListing(t, "a mount of the image pulled into a second store", imageListing(t, mnt), want)
	})
}

// TestImageFromUmoci mounts an image that umoci wrote, with whiteouts,
// opaque directories and hard links across three layers, and compares the
// mount with umoci's own unpack of it.
func TestImageFromUmoci(t *testing.T) {
	needRoot(t)
	needFUSE(t)
	needTools(t, "umoci")
	root := t.TempDir()
	img := filepath.Join(root, "img")
	tool(t, "umoci", "init", "--layout", img)
	tool(t, "umoci", "new", "--image", img+":base")
	bundle := filepath.Join(root, "bundle")
	tool(t, "umoci", "unpack", "--image", img+":base", bundle)
	rfs := filepath.Join(bundle, "rootfs")
	write := func(p, data string) {
		t.Helper()
		os.MkdirAll(filepath.Dir(filepath.Join(rfs, p)), 0o755)
		if err := os.WriteFile(filepath.Join(rfs, p), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Layer 1: a tree with hard links, a symlink, owners and modes.
	write("etc/app/config", "one")
	write("etc/app/extra", "two")
	write("opaq/one", "1")
	write("opaq/sub/two", "2")
	write("bin/tool", "#!/bin/sh\n")
	os.Chmod(filepath.Join(rfs, "bin/tool"), 0o755)
	os.Link(filepath.Join(rfs, "bin/tool"), filepath.Join(rfs, "bin/tool-link"))
	os.Symlink("tool", filepath.Join(rfs, "bin/tool-sym"))
	os.Lchown(filepath.Join(rfs, "etc/app/extra"), 1000, 1000)
	tool(t, "umoci", "repack", "--image", img+":layer1", bundle)
	// Layer 2: deletions (whiteouts) and a replaced tree.
	os.Remove(filepath.Join(rfs, "etc/app/extra"))
	os.RemoveAll(filepath.Join(rfs, "opaq"))
	write("opaq/new", "new")
	write("etc/app/config", "changed")
	tool(t, "umoci", "repack", "--image", img+":layer2", bundle)
	// Layer 3: an opaque directory and a whiteout inserted directly.
	src := filepath.Join(root, "src")
	os.MkdirAll(filepath.Join(src, "fresh"), 0o755)
	os.WriteFile(filepath.Join(src, "fresh", "only"), []byte("only"), 0o644)
	tool(t, "umoci", "insert", "--image", img+":layer2", "--tag", "layer3", "--opaque", src, "/etc")
	tool(t, "umoci", "insert", "--image", img+":layer3", "--tag", "final", "--whiteout", "/bin/tool-sym")

	ref := filepath.Join(root, "ref")
	tool(t, "umoci", "unpack", "--image", img+":final", ref)
	want := imageListing(t, filepath.Join(ref, "rootfs"))

	store := filepath.Join(root, "store")
	umStore(t, store, "load", "--layout", img)
	mnt := filepath.Join(root, "m")
	os.Mkdir(mnt, 0o755)
	umStore(t, store, "--image", "final", "--read-only", mnt)
	t.Cleanup(func() { unmount(t, mnt) })
	sameListing(t, "the mount of umoci's image", imageListing(t, mnt), want)
	// The tree has what the layers say, so the comparison means something.
	all := "\n" + strings.Join(want, "\n") + "\n"
	for _, must := range []string{"\netc/fresh/only reg", "\nopaq/new reg", "link=bin/tool"} {
		if !strings.Contains(all, must) {
			t.Errorf("umoci's tree lacks %q:%s", must, all)
		}
	}
	for _, gone := range []string{"\netc/app", "\nopaq/one", "\nopaq/sub", "\nbin/tool-sym"} {
		if strings.Contains(all, gone) {
			t.Errorf("umoci's tree has %q:%s", gone, all)
		}
	}
}

// TestImageRootless is the container story as an unprivileged user: import
// a rootfs with a device node (it becomes an empty placeholder file),
// mount the image through fusermount3, change it, commit it as a new
// image, and check the new image with umoci.
func TestImageRootless(t *testing.T) {
	needRoot(t) // to become the unprivileged user
	needFUSE(t)
	needTools(t, "umoci", "fusermount3")
	needFUSEDevice(t) // the user mounts through fusermount3
	root := permSharedDir(t)
	exe := permCopyExe(t, binary, root, "unionmount")
	work := filepath.Join(root, "user")
	os.Mkdir(work, 0o755)
	if err := os.Chown(work, rootlessUID, rootlessGID); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(work, "store")
	merged := filepath.Join(work, "m")
	rootfs := filepath.Join(root, "rootfs.tar")
	rootfsTar(t, rootfs)
	f, _ := os.ReadFile(rootfs)
	// Append a device node: rewrite the tarball with one more entry.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tr := tar.NewReader(bytes.NewReader(f))
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		tw.WriteHeader(h)
		io.Copy(tw, tr)
	}
	tw.WriteHeader(&tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755, Format: tar.FormatPAX})
	tw.WriteHeader(&tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, Format: tar.FormatPAX})
	tw.Close()
	os.WriteFile(rootfs, buf.Bytes(), 0o644)

	asUser := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = work
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + work, "UNIONMOUNT_STORE=" + store}
		cmd.SysProcAttr = permCred(rootlessUID, rootlessGID)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s as uid %d: %v\n%s", name, strings.Join(args, " "), rootlessUID, err, out)
		}
		return string(out)
	}
	out := asUser(exe, "import", rootfs, "base:1")
	if !strings.Contains(out, "dev/null") {
		t.Errorf("import as a user says nothing of the device it could not make:\n%s", out)
	}
	os.Mkdir(merged, 0o755)
	os.Chown(merged, rootlessUID, rootlessGID)
	t.Cleanup(func() {
		if isMounted(merged) {
			if out, err := rootlessRun("fusermount3", "-u", merged); err != nil {
				t.Errorf("fusermount3 -u: %v\n%s", err, out)
				exec.Command("umount", "-l", merged).Run()
			}
		}
		rootlessWaitGone(t, exe, merged)
	})
	asUser(exe, "--image", "base:1", merged)
	out = asUser("sh", "-c", "stat -c '%F %s' m/dev/null && echo new > m/etc/new && rm m/var/log/syslog && rm -r m/usr/share/doc && mkdir m/usr/share/doc && "+exe+" diff m")
	if !strings.HasPrefix(out, "regular empty file 0\n") {
		t.Errorf("the device in the image, mounted by a user: %q, want an empty placeholder file", out)
	}
	for _, want := range []string{"A /etc/new", "D /var/log/syslog", "C /usr/share/doc", "D /usr/share/doc/README"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("diff lacks %q:\n%s", want, out)
		}
	}
	asUser(exe, "commit", merged, "--tag", "base:2", "-m", "as a user")

	bundle := filepath.Join(root, "bundle")
	tool(t, "umoci", "unpack", "--image", store+":base:2", bundle)
	rfs := filepath.Join(bundle, "rootfs")
	if data, err := os.ReadFile(filepath.Join(rfs, "etc/new")); err != nil || string(data) != "new\n" {
		t.Errorf("umoci: etc/new = %q, %v", data, err)
	}
	for _, gone := range []string{"var/log/syslog", "usr/share/doc/README"} {
		if _, err := os.Lstat(filepath.Join(rfs, gone)); !os.IsNotExist(err) {
			t.Errorf("umoci: %s should be gone: %v", gone, err)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(rfs, "usr/share/doc")); err != nil || len(ents) != 0 {
		t.Errorf("umoci: usr/share/doc should be an empty directory: %v, %v", ents, err)
	}
}

// TestContainers: an image mount's container layer outlives the mount, is
// mounted again with its committed layers, is listed, and is removed only
// when not mounted.
func TestContainers(t *testing.T) {
	needRoot(t)
	needFUSE(t)
	root := t.TempDir()
	store := filepath.Join(root, "store")
	rootfs := filepath.Join(root, "rootfs.tar")
	rootfsTar(t, rootfs)
	umStore(t, store, "import", rootfs, "base:1")
	merged := filepath.Join(root, "m")
	os.Mkdir(merged, 0o755)
	umStore(t, store, "--image", "base:1", merged)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			unmount(t, merged)
		}
	})
	if err := os.WriteFile(filepath.Join(merged, "etc/new"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	umStore(t, store, "commit", merged, "-m", "in the container")
	if err := os.WriteFile(filepath.Join(merged, "etc/later"), []byte("2"), 0o644); err != nil {
		t.Fatal(err)
	}
	list := umStore(t, store, "containers")
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "base:1") || !strings.Contains(lines[1], " mounted ") {
		t.Fatalf("containers while mounted:\n%s", list)
	}
	id := strings.Fields(lines[1])[0]
	cmd := exec.Command(binary, "rm", id)
	cmd.Env = append(os.Environ(), "UNIONMOUNT_STORE="+store)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "mounted") {
		t.Errorf("rm of a mounted container: %v, %s", err, out)
	}
	unmount(t, merged)
	mounted = false

	// Mounted again: the committed layer and the upper are both there.
	upper := filepath.Join(store, "containers", id, "upper")
	umStore(t, store, "--image", "base:1", upper, merged)
	mounted = true
	for p, want := range map[string]string{"etc/new": "1", "etc/later": "2"} {
		if data, err := os.ReadFile(filepath.Join(merged, p)); err != nil || string(data) != want {
			t.Errorf("container mounted again: %s = %q, %v; want %q", p, data, err, want)
		}
	}
	if out := umStore(t, store, "layers", merged); !strings.Contains(out, "in the container") {
		t.Errorf("layers of the container mounted again lack its commit:\n%s", out)
	}
	unmount(t, merged)
	mounted = false
	if out := umStore(t, store, "rm", id); strings.TrimSpace(out) != id {
		t.Errorf("rm printed %q", out)
	}
	if out := strings.TrimSpace(umStore(t, store, "containers")); strings.Contains(out, id) {
		t.Errorf("container %s still listed after rm:\n%s", id, out)
	}
	if _, err := os.Stat(filepath.Join(store, "containers", id)); !os.IsNotExist(err) {
		t.Errorf("container directory left after rm: %v", err)
	}
	// The image is untouched and mounts.
	umStore(t, store, "--image", "base:1", "--read-only", merged)
	mounted = true
	if _, err := os.Stat(filepath.Join(merged, "etc/hostname")); err != nil {
		t.Errorf("image after rm of its container: %v", err)
	}
}
