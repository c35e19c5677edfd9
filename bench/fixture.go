package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// layout names the directories of a run. Everything the benchmark writes
// is under base.
type layout struct {
	base string // -dir, or -root's unionmount-bench
	fx   string // the fixture's filesystem: base/mnt on the loop image, else base
	bin  string // base/bin: the unionmount binary
	logs string // base/logs: daemon output
	home string // base/home: HOME, GOPATH and go's config for go build

	l1, l2  string // fx/l1 (top), fx/l2 (bottom)
	flat    string // fx/flat: L1 over L2 as one plain directory, the native floor
	tarball string // fx/tree.tar: the tree, for untar
	runs    string // fx/runs/SYSTEM: upper, work and merged of one sample
	stamp   string // fx/.stamp: what the fixture was built for
}

func newLayout(base, fx string) layout {
	return layout{
		base: base, fx: fx,
		bin:     filepath.Join(base, "bin"),
		logs:    filepath.Join(base, "logs"),
		home:    filepath.Join(base, "home"),
		l1:      filepath.Join(fx, "l1"),
		l2:      filepath.Join(fx, "l2"),
		flat:    filepath.Join(fx, "flat"),
		tarball: filepath.Join(fx, "tree.tar"),
		runs:    filepath.Join(fx, "runs"),
		stamp:   filepath.Join(fx, ".stamp"),
	}
}

// fixedTime is the mtime of every fixture file, so that the tarball and
// the trees are the same from run to run.
var fixedTime = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// stampText describes the fixture this configuration needs; a kept fixture
// with the same stamp is reused.
func (b *bench) stampText() string {
	return fmt.Sprintf("unionmount-bench fixture v2\nmany=%d\nbig=%d\ntree=%s\nshadow=%s\nproj=%d\ngo=%s\n", b.cfg.many,
		b.cfg.bigSize, strings.Join(b.cfg.treeDirs, ","), b.cfg.shadow, b.cfg.projPkgs, b.goVersion)
}

// setupStorage prepares base and the fixture filesystem, on a new loop
// image or in -root, and registers their removal.
func (b *bench) setupStorage() error {
	if b.cfg.root != "" {
		return b.setupDirStorage()
	}
	return b.setupLoopStorage()
}

func (b *bench) setupDirStorage() error {
	root, err := filepath.Abs(b.cfg.root)
	if err != nil {
		return err
	}
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		return fmt.Errorf("-root %s: not a directory", root)
	}
	base := filepath.Join(root, "unionmount-bench")
	b.lay = newLayout(base, base)
	if ents, err := os.ReadDir(base); err == nil && len(ents) > 0 {
		if _, err := os.Stat(b.lay.stamp); err != nil {
			return fmt.Errorf("%s exists and holds no benchmark fixture; remove it or pick another -root", base)
		}
	}
	if err := leftovers(base); err != nil {
		return err
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return err
	}
	if !b.cfg.keep {
		b.cl.push("remove "+base, func() error { return safeRemoveAll(base) })
	}
	return nil
}

func (b *bench) setupLoopStorage() error {
	base, err := filepath.Abs(b.cfg.dir)
	if err != nil {
		return err
	}
	b.lay = newLayout(base, filepath.Join(base, "mnt"))
	if err := os.MkdirAll(base, 0o755); err != nil {
		return err
	}
	if !b.cfg.keep {
		// Last: base goes once empty, also when a -keep run made it.
		b.cl.push("remove "+base, func() error {
			if err := os.Remove(base); err != nil && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			return nil
		})
	}
	img := filepath.Join(base, "ext4.img")
	if !b.cfg.keep {
		b.cl.push("remove "+img, func() error {
			err := os.Remove(img)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		})
		for _, d := range []string{b.lay.bin, b.lay.logs, b.lay.home, b.lay.fx} {
			b.cl.push("remove "+d, func() error { return safeRemoveAll(d) })
		}
	}
	if err := os.MkdirAll(b.lay.fx, 0o755); err != nil {
		return err
	}
	if err := leftovers(base); err != nil {
		return err
	}
	if att, _ := output(b.ctx, "losetup", "-j", img); att != "" {
		return fmt.Errorf("%s is still attached, so a run was killed: detach it first (losetup -d): %s", img, att)
	}
	if _, err := os.Stat(img); err == nil {
		if err := b.attachImage(img, false); err != nil {
			return err
		}
		if want, got := b.stampText(), readFile(b.lay.stamp); got == want {
			return nil
		}
		fmt.Fprintf(os.Stderr, "bench: %s was built for another configuration; making a new one\n", img)
		if err := b.detachImage(); err != nil {
			return err
		}
		if err := os.Remove(img); err != nil {
			return err
		}
	}
	size := 4*b.cfg.bigSize + 2<<30
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size) // sparse
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return b.attachImage(img, true)
}

// attachImage attaches img to a loop device with direct I/O (so the image
// file's page cache does not double the fixture's), makes an ext4 on it
// when fresh, and mounts it on lay.fx without discard.
func (b *bench) attachImage(img string, fresh bool) error {
	dev, err := output(b.ctx, "losetup", "--direct-io=on", "--find", "--show", img)
	if err != nil {
		return err
	}
	b.loopDev = dev
	detach := b.cl.push("detach "+dev, func() error { return run(context.Background(), "", nil, "losetup", "-d", dev) })
	if fresh {
		if err := run(b.ctx, "", nil, "mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", dev); err != nil {
			return errors.Join(err, detach())
		}
	}
	if err := unix.Mount(dev, b.lay.fx, "ext4", 0, "nodiscard"); err != nil {
		return errors.Join(fmt.Errorf("mount %s on %s: %w", dev, b.lay.fx, err), detach())
	}
	unmount := b.cl.push("unmount "+b.lay.fx, func() error { return unmountDir(b.lay.fx) })
	b.detachLoop = func() error { return errors.Join(unmount(), detach()) }
	return nil
}

func (b *bench) detachImage() error {
	err := b.detachLoop()
	b.detachLoop, b.loopDev = nil, ""
	return err
}

// leftovers refuses to start while a killed run's mounts are still there.
func leftovers(base string) error {
	m, err := mountsUnder(base)
	if err != nil {
		return err
	}
	if len(m) > 0 {
		return fmt.Errorf("%s is still mounted, so a run was killed: unmount it first (umount %s)", m[len(m)-1], m[len(m)-1])
	}
	return nil
}

func readFile(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(data)
}

// prepareFixture builds the layers, the flat copy and the tarball, unless
// a kept fixture for this configuration is there; then it resets what an
// interrupted run may have left.
func (b *bench) prepareFixture() error {
	for _, d := range []string{b.lay.bin, b.lay.logs, b.lay.home} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if readFile(b.lay.stamp) == b.stampText() {
		fmt.Fprintf(os.Stderr, "bench: reusing the fixture in %s\n", b.lay.fx)
		return b.resetFixture()
	}
	for _, d := range []string{b.lay.l1, b.lay.l2, b.lay.flat, b.lay.runs, b.lay.tarball, b.lay.stamp} {
		if err := safeRemoveAll(d); err != nil {
			return err
		}
	}
	steps := []struct {
		what string
		fn   func() error
	}{
		{fmt.Sprintf("big.bin (%d MiB)", b.cfg.bigSize>>20), func() error {
			return writeRandomFile(filepath.Join(b.lay.l2, "big.bin"), b.cfg.bigSize, 1)
		}},
		{"source tree", b.makeTree},
		{"tarball", func() error { return run(b.ctx, b.lay.l2, nil, "tar", "-cf", b.lay.tarball, "tree") }},
		{"go module and its build cache", b.makeProj},
		{fmt.Sprintf("many/ (%d entries)", b.cfg.many), b.makeMany},
		{"flat copy for native", b.makeFlat},
	}
	for _, s := range steps {
		t0 := time.Now()
		fmt.Fprintf(os.Stderr, "bench: making %s ...", s.what)
		if err := s.fn(); err != nil {
			fmt.Fprintln(os.Stderr)
			return fmt.Errorf("making %s: %w", s.what, err)
		}
		fmt.Fprintf(os.Stderr, " %.1f s\n", time.Since(t0).Seconds())
		if b.ctx.Err() != nil {
			return b.ctx.Err()
		}
	}
	unix.Sync()
	return os.WriteFile(b.lay.stamp, []byte(b.stampText()), 0o644)
}

// deepLowers returns the lowers of the layered stack, top-most first.
func (b *bench) deepLowers() []string {
	ls := make([]string, b.cfg.layers)
	for k := range ls {
		ls[k] = filepath.Join(b.lay.fx, "deep", fmt.Sprintf("l%d", k))
	}
	return ls
}

// deepFlat is the native floor of the layered stack.
func (b *bench) deepFlat() string { return filepath.Join(b.lay.fx, "deep", "flat") }

// prepareDeep makes deep/, the layered stack, unless a kept one fits: its
// bottom lower is a copy of L2's tree, each of the others every
// directory of the tree with one file of its own, and flat/ all of them in
// one tree, for the native floor.
func (b *bench) prepareDeep() error {
	dir := filepath.Join(b.lay.fx, "deep")
	stamp := filepath.Join(dir, ".stamp")
	want := fmt.Sprintf("%slayers=%d\n", b.stampText(), b.cfg.layers)
	if readFile(stamp) == want {
		return nil
	}
	if err := safeRemoveAll(dir); err != nil {
		return err
	}
	t0 := time.Now()
	fmt.Fprintf(os.Stderr, "bench: making deep/ (%d lowers) ...", b.cfg.layers)
	lowers := b.deepLowers()
	bottom := lowers[len(lowers)-1]
	if err := os.MkdirAll(bottom, 0o755); err != nil {
		return err
	}
	// Copies, not hard links: a file with several names costs a lookup
	// of the link index in unionmount, and L2's rows must not change.
	if err := copyTree(filepath.Join(b.lay.l2, "tree"), filepath.Join(bottom, "tree")); err != nil {
		return err
	}
	var dirs []string
	err := filepath.WalkDir(bottom, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != bottom {
			dirs = append(dirs, p[len(bottom)+1:])
		}
		return err
	})
	if err != nil {
		return err
	}
	for k, l := range lowers[:len(lowers)-1] {
		for _, d := range dirs {
			if err := os.MkdirAll(filepath.Join(l, d), 0o755); err != nil {
				return err
			}
			name := filepath.Join(l, d, fmt.Sprintf("layer%d", k))
			if err := os.WriteFile(name, []byte(fmt.Sprintf("%d\n", k)), 0o644); err != nil {
				return err
			}
		}
		if err := fixTimes(l); err != nil {
			return err
		}
	}
	flat := b.deepFlat()
	if err := os.MkdirAll(flat, 0o755); err != nil {
		return err
	}
	for _, l := range lowers {
		if err := copyTree(l, flat); err != nil {
			return err
		}
	}
	if err := errors.Join(fixTimes(bottom), fixTimes(flat)); err != nil {
		return err
	}
	unix.Sync()
	fmt.Fprintf(os.Stderr, " %.1f s\n", time.Since(t0).Seconds())
	return os.WriteFile(stamp, []byte(want), 0o644)
}

// resetFixture undoes what a native sample may have left in flat when a
// run was interrupted.
func (b *bench) resetFixture() error {
	big := filepath.Join(b.lay.flat, "big.bin")
	return errors.Join(
		os.Truncate(big, b.cfg.bigSize),
		os.Chmod(big, 0o644),
		safeRemoveAll(b.lay.runs),
		safeRemoveAll(filepath.Join(b.lay.flat, "untar")),
		safeRemoveAll(filepath.Join(b.lay.flat, "w.bin")),
		safeRemoveAll(filepath.Join(b.lay.flat, "tree.rm")),
	)
}

// writeRandomFile writes size bytes from a ChaCha8 stream with the given
// seed and fsyncs them.
func writeRandomFile(path string, size int64, seed byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	var key [32]byte
	key[0] = seed
	rng := rand.NewChaCha8(key)
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(left, int64(len(buf)))
		_, _ = rng.Read(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
		left -= n
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chtimes(path, fixedTime, fixedTime)
}

// makeTree copies the configured directories of $GOROOT into l2/tree and
// the shadowed subtree into l1/tree, with fixed times.
func (b *bench) makeTree() error {
	dst := filepath.Join(b.lay.l2, "tree")
	for _, d := range b.cfg.treeDirs {
		if err := copyTree(filepath.Join(b.goroot, d), filepath.Join(dst, d)); err != nil {
			return err
		}
	}
	shadow := filepath.Join(b.lay.l1, "tree", b.cfg.shadow)
	if err := copyTree(filepath.Join(dst, b.cfg.shadow), shadow); err != nil {
		return err
	}
	return errors.Join(fixTimes(b.lay.l1), fixTimes(b.lay.l2))
}

// copyTree copies directories, regular files and symlinks from src to dst,
// keeping permission bits; parents of dst are made as needed.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(to, info.Mode().Perm()|0o700)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case d.Type().IsRegular():
			return copyFile(p, to, info.Mode().Perm())
		}
		return nil // sockets, devices: none in GOROOT
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// fixTimes sets the atime and mtime of everything under dir to fixedTime,
// children before their directories.
func fixTimes(dir string) error {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	})
	if err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(fixedTime.UnixNano()), unix.NsecToTimespec(fixedTime.UnixNano())}
	for _, p := range slices.Backward(paths) {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

// makeProj writes a module without dependencies into l2/proj and fills
// l2/gocache by building it once, so that go build in the merged directory
// has nothing to do. -trimpath keeps the cache keys free of the directory.
func (b *bench) makeProj() error {
	dir := filepath.Join(b.lay.l2, "proj")
	if err := writeProj(dir, b.cfg.projPkgs); err != nil {
		return err
	}
	cache := filepath.Join(b.lay.l2, "gocache")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return err
	}
	if err := run(b.ctx, dir, b.goEnv(cache), b.goBin, "build", "./..."); err != nil {
		return err
	}
	return fixTimes(dir)
}

// writeProj writes module benchproj: npkg library packages p00..., each of
// four files, each package importing the one before it and a few of the
// standard library's.
func writeProj(dir string, npkg int) error {
	files := map[string]string{"go.mod": "module benchproj\n\ngo 1.22\n"}
	for i := range npkg {
		pkg := fmt.Sprintf("p%02d", i)
		for f := range 4 {
			var s strings.Builder
			fmt.Fprintf(&s, "// Package %s is generated by the unionmount benchmark.\npackage %s\n\nimport (\n\t\"sort\"\n\t\"strconv\"\n\t\"strings\"\n", pkg, pkg)
			if i > 0 && f == 0 {
				fmt.Fprintf(&s, "\n\tprev \"benchproj/p%02d\"\n", i-1)
			}
			s.WriteString(")\n\n")
			if i > 0 && f == 0 {
				s.WriteString("// Prev calls into the previous package.\nfunc Prev(xs []string) string { return prev.F0_0(xs) }\n\n")
			}
			for k := range 20 {
				fmt.Fprintf(&s, "// F%d_%d joins xs, sorted, and a number.\nfunc F%d_%d(xs []string) string {\n\tys := append([]string(nil), xs...)\n\tsort.Strings(ys)\n\treturn strings.Join(ys, \",\") + strconv.Itoa(%d)\n}\n\n", f, k, f, k, i*100+k)
			}
			files[filepath.Join(pkg, fmt.Sprintf("f%d.go", f))] = s.String()
		}
	}
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// makeMany writes l2/many: directories of 250 empty files each, b.cfg.many
// entries in all.
func (b *bench) makeMany() error {
	root := filepath.Join(b.lay.l2, "many")
	for i := 0; i*251 < b.cfg.many; i++ {
		d := filepath.Join(root, fmt.Sprintf("d%04d", i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		for j := 0; j < 250; j++ {
			if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%03d", j)), nil, 0o644); err != nil {
				return err
			}
		}
	}
	return fixTimes(root)
}

// makeFlat builds the native floor: a plain copy of L1 over L2 (copies, not
// hard links, so that the lowers' link counts stay 1).
func (b *bench) makeFlat() error {
	if err := os.MkdirAll(b.lay.flat, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"big.bin", "tree", "proj", "gocache", "many"} {
		if err := run(b.ctx, "", nil, "cp", "-a", filepath.Join(b.lay.l2, name), b.lay.flat+"/"); err != nil {
			return err
		}
	}
	shadow := filepath.Join(b.lay.flat, "tree", b.cfg.shadow)
	if err := os.RemoveAll(shadow); err != nil {
		return err
	}
	if err := run(b.ctx, "", nil, "cp", "-a", filepath.Join(b.lay.l1, "tree", b.cfg.shadow), filepath.Dir(shadow)+"/"); err != nil {
		return err
	}
	return fixTimes(b.lay.flat)
}

// goEnv is the environment of go build: offline, module mode, no
// workspace, the given cache, and everything else under base/home.
func (b *bench) goEnv(cache string) []string {
	h := b.lay.home
	return []string{
		"PATH=" + filepath.Dir(b.goBin) + ":" + os.Getenv("PATH"),
		"HOME=" + h,
		"XDG_CONFIG_HOME=" + filepath.Join(h, ".config"),
		"XDG_CACHE_HOME=" + filepath.Join(h, ".cache"),
		"GOPATH=" + filepath.Join(h, "go"),
		"GOCACHE=" + cache,
		"GOFLAGS=-mod=mod -trimpath",
		"GOPROXY=off",
		"GOSUMDB=off",
		"GOTOOLCHAIN=local",
		"GOWORK=off",
		"GOENV=off",
		"CGO_ENABLED=0",
	}
}

// countEntries counts the names under dir, dir included.
func countEntries(dir string) int {
	n := 0
	_ = filepath.WalkDir(dir, func(string, fs.DirEntry, error) error {
		n++
		return nil
	})
	return n
}
