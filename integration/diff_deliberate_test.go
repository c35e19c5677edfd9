package integration

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// The documented differences from kernel overlayfs, each checked on its
// own: unionmount renames directories that have lower layers (the kernel,
// without redirect_dir, says EXDEV), it refuses to create names that
// start with ".wh." (the kernel allows them, and a later export turns them
// into deletions), and it copies a lower file up at its first write, not
// at an open for writing.

// dirRenameCases are renames the kernel refuses with EXDEV.
var dirRenameCases = []struct {
	name  string
	setup []op // run on both sides first; must agree
	ren   op
	after []op // run on both sides after the kernel side is brought level
}{
	{"merged-dir", nil, opRename("d", "d2", 0), []op{opReaddir("d2"), opReaddir("d2/sub"), opStat("d2/g"), opStat("d")}},
	{"opaque-lower-dir", nil, opRename("opq", "opq2", 0), []op{opReaddir("opq2"), opStat("opq2/below")}},
	{"into-upper-dir", nil, opRename("d/sub", "updir/sub", 0), []op{opReaddir("updir/sub"), opReaddir("d")}},
	{"over-whiteout", nil, opRename("mdir", "hidden", 0), []op{opReaddir("hidden"), opStat("mdir")}},
	{"over-empty-lower-dir", nil, opRename("wdir", "empty", 0), []op{opReaddir("empty")}},
	{"upper-and-lower-dir", nil, opRename("both", "both2", 0), []op{opReaddir("both2")}},
	{"partly-copied-up", []op{opCreate("d/sub/new", "n"), opUnlink("d/f"), opChmod("d/sub/s1", 0600)},
		opRename("d", "dd", 0), []op{opReaddir("dd"), opReaddir("dd/sub"), opRead("dd/sub/new")}},
	{"then-back", nil, opRename("d", "d2", 0), []op{opCreate("d2/x", "x"), opUnlink("d2/h"), opRename("d2", "d", 0), opReaddir("d")}},
	{"exchange-with-upper-dir", nil, opRename("d", "updir", exchange), []op{opReaddir("d"), opReaddir("updir")}},
	{"noreplace-free-name", nil, opRename("mdir", "fresh", noreplace), []op{opReaddir("fresh")}},
}

// TestDiffDirRename checks unionmount's directory rename against the same
// rename done in userspace (cp -a, rm -rf) on kernel overlayfs, and checks
// that the upper it leaves mounts under kernel overlayfs with the same
// tree.
func TestDiffDirRename(t *testing.T) {
	for _, c := range dirRenameCases {
		t.Run(c.name, func(t *testing.T) {
			p := newPair(t, defaultStack)
			for i, o := range c.setup {
				p.do(t, i, o)
			}
			if want := c.ren.run(p.ref.merged); want.errno != unix.EXDEV {
				t.Fatalf("kernel: %s: %v, want EXDEV; the case tests nothing", c.ren, want)
			}
			got := p.peer.run(c.ren)
			if p.peer.impl == "kernel" {
				return // the kernel refuses; nothing more to compare
			}
			if got.errno != 0 {
				t.Fatalf("%s: got %v, want ok (unionmount renames directories)", c.ren, got)
			}
			if err := userspaceRename(p.ref.merged, c.ren.path, c.ren.path2, c.ren.flags); err != nil {
				t.Fatal(err)
			}
			want, gotSnap := p.snapMerged(t)
			reportDiffs(t, "merged tree after the rename", diffSnapshots(gotSnap, want, "kernel, cp -a + rm -rf", cmpOpts{}), nil)
			for i, o := range c.after {
				p.do(t, i, o)
			}
			want, gotSnap = p.snapMerged(t)
			reportDiffs(t, "merged tree after more ops", diffSnapshots(gotSnap, want, "kernel, cp -a + rm -rf", cmpOpts{}), nil)

			// The union's upper must speak the kernel's format.
			p.unmount(t)
			up, err := takeSnapshot(p.peer.upper, snapRaw)
			if err != nil {
				t.Fatal(err)
			}
			checkRenameFormat(t, c.ren, c.after, up)
			kmnt := crossMount(t, p.peer, "kernel", "kernel")
			kview, err := takeSnapshot(kmnt, snapForeign)
			if err != nil {
				t.Fatal(err)
			}
			reportDiffs(t, "kernel mounting unionmount's upper", diffSnapshots(kview, gotSnap, "unionmount before unmount", cmpOpts{ino: true, noDino: true}), nil)
		})
	}
}

// checkRenameFormat checks the upper left by a rename with nothing after
// it that renames back: the destination is an opaque directory and the
// source, when still hidden, a whiteout.
func checkRenameFormat(t *testing.T, ren op, after []op, up snapshot) {
	t.Helper()
	for _, o := range after {
		if o.kind == "rename" {
			return
		}
	}
	dst := up[ren.path2]
	if dst == nil || dst.typ != "dir" || dst.opaque != "y" {
		t.Errorf("upper %s: got %v, want an opaque directory", ren.path2, describeOrAbsent(dst))
	}
	if ren.flags == exchange {
		return
	}
	if src := up[ren.path]; src == nil || src.typ != "whiteout" {
		t.Errorf("upper %s: got %v, want a whiteout", ren.path, describeOrAbsent(src))
	}
}

func describeOrAbsent(o *obj) string {
	if o == nil {
		return "absent"
	}
	return o.describe()
}

// TestDiffWhiteoutPrefixNames checks that unionmount refuses to create
// names starting with ".wh." with EINVAL, where the kernel allows them, and
// that the refusal leaves the tree as it was.
func TestDiffWhiteoutPrefixNames(t *testing.T) {
	p := newPair(t, defaultStack)
	_, before := p.snapMerged(t)
	ops := []op{
		opCreate(".wh.foo", "x"), opCreate("d/.wh.f", "x"), opCreate(".wh..wh..opq", "x"),
		opMkdir(".wh.dir", 0755), opSymlink(".wh.sym", "lower.txt"), opMkfifo(".wh.fifo", 0644),
		opLink("lower.txt", ".wh.link"), opRename("up.txt", ".wh.renamed", 0), opRename("lower.txt", "d/.wh.lower", 0),
		{kind: "mknod", path: ".wh.chr", mode: 0600, flags: int(unix.Mkdev(1, 7))},
	}
	for _, o := range ops {
		want := o.run(p.ref.merged)
		got := p.peer.run(o)
		if want.errno != 0 {
			t.Errorf("kernel: %s: %v, want ok", o, want)
		}
		wantPeer := unix.EINVAL
		if p.peer.impl == "kernel" {
			wantPeer = 0
		}
		if got.errno != wantPeer {
			t.Errorf("%s: %s: got %v, want %s", p.peer.name, o, got, unix.ErrnoName(wantPeer))
		}
	}
	if p.peer.impl == "kernel" {
		return
	}
	_, after := p.snapMerged(t)
	reportDiffs(t, "unionmount tree after refused .wh. names", diffSnapshots(after, before, "unionmount before", cmpOpts{ino: true}), nil)
	p.unmount(t)
	for _, n := range []string{".wh.foo", ".wh.dir", "d/.wh.f"} {
		if _, err := os.Lstat(filepath.Join(p.peer.upper, n)); err == nil {
			t.Errorf("upper has %s after the refused create", n)
		}
	}
}

// TestDiffCopyUpAtFirstWrite opens a lower file for writing and closes it
// unwritten on both sides: the kernel copies it up at the open, unionmount
// (opening files without the daemon, fs/noopen.go) leaves the upper as it
// was. The merged views agree, and after a write through a descriptor
// opened before it, so do the uppers.
func TestDiffCopyUpAtFirstWrite(t *testing.T) {
	if !opensWithoutDaemon() {
		t.Skipf("-diff.opts=%s: files open through the daemon, which copies up at the open", *diffOpts)
	}
	p := newPair(t, defaultStack)
	if p.peer.impl == "kernel" {
		t.Skip("the peer is the kernel")
	}
	held := map[string]*os.File{}
	for _, s := range []*side{p.ref, p.peer} {
		f, err := os.OpenFile(filepath.Join(s.merged, "lower.txt"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		held[s.name] = f
		g, err := os.OpenFile(filepath.Join(s.merged, "lower.txt"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		g.Close()
	}
	if _, err := os.Lstat(filepath.Join(p.ref.upper, "lower.txt")); err != nil {
		t.Fatalf("the kernel did not copy up at the open (%v): the test tests nothing", err)
	}
	if _, err := os.Lstat(filepath.Join(p.peer.upper, "lower.txt")); !os.IsNotExist(err) {
		t.Errorf("opens for writing without a write copied lower.txt up: %v", err)
	}
	k, u := p.snapMerged(t)
	reportDiffs(t, "merged view after the opens", diffSnapshots(u, k, "kernel", cmpOpts{}), nil)
	for _, s := range []*side{p.ref, p.peer} {
		if _, err := held[s.name].WriteAt([]byte("W"), 3); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	k, u = p.snapMerged(t)
	reportDiffs(t, "merged view after the write", diffSnapshots(u, k, "kernel", cmpOpts{}), nil)
	ku, uu := p.snapUpper(t)
	reportDiffs(t, "upper after the write", diffSnapshots(uu, ku, "kernel", cmpOpts{ino: true}), nil)
}
