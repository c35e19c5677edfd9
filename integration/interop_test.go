package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// The interop tests check the on-disk format: an upper written by one
// implementation, mounted by the other, shows the same tree; and lowers in
// the OCI layer format (.wh.NAME files) show the same tree under unionmount
// as their kernel-format conversion does under the kernel.

// peerImpl is the implementation that plays unionmount (see -diff.peer).
func peerImpl(t testing.TB) string {
	t.Helper()
	needRoot(t)
	switch *diffPeer {
	case "union":
		needFUSE(t)
		return "union"
	case "kernel":
		return "kernel"
	}
	t.Fatalf("-diff.peer=%q: want union or kernel", *diffPeer)
	return ""
}

// crossMount mounts s's lowers and upper with impl, with a fresh workdir
// and mount point, and returns the mount point.
func crossMount(t testing.TB, s *side, impl, tag string) string {
	t.Helper()
	work := filepath.Join(filepath.Dir(s.upper), "work-"+tag)
	mnt := filepath.Join(filepath.Dir(s.upper), "merged-"+tag)
	for _, d := range []string{work, mnt} {
		if err := os.Mkdir(d, 0755); err != nil {
			t.Fatal(err)
		}
	}
	c := *s
	c.work, c.merged = work, mnt
	mountStack(t, impl, c.mountOpts(), mnt)
	return mnt
}

// TestInteropUnionUpperOnKernel runs each corpus scenario on unionmount,
// then mounts the upper it left with kernel overlayfs, which must show the
// tree unionmount showed.
func TestInteropUnionUpperOnKernel(t *testing.T) {
	for _, sc := range corpus {
		t.Run(sc.name, func(t *testing.T) {
			interopScenario(t, peerImpl(t), "kernel", sc.ops)
		})
	}
}

// TestInteropKernelUpperOnUnion runs each corpus scenario on kernel
// overlayfs, then mounts the upper it left with unionmount, which must
// show the tree the kernel showed.
func TestInteropKernelUpperOnUnion(t *testing.T) {
	for _, sc := range corpus {
		t.Run(sc.name, func(t *testing.T) {
			interopScenario(t, "kernel", peerImpl(t), sc.ops)
		})
	}
}

// interopScenario runs ops on a writer mount, unmounts, mounts the same
// layers with reader and compares the two merged trees.
func interopScenario(t *testing.T, writer, reader string, ops []op) {
	s := newSide(t, filepath.Join(t.TempDir(), "s"), writer, writer, defaultStack)
	s.mount(t)
	for _, o := range ops {
		o.run(s.merged)
	}
	want, err := takeSnapshot(s.merged, snapMerged)
	if err != nil {
		t.Fatalf("%s snapshot: %v", writer, err)
	}
	s.unmount(t)
	mnt := crossMount(t, s, reader, "cross")
	mode := snapMerged
	if reader == "kernel" {
		mode = snapForeign
	}
	got, err := takeSnapshot(mnt, mode)
	if err != nil {
		t.Fatalf("%s snapshot of %s's upper: %v", reader, writer, err)
	}
	name := implName(writer) + " before unmount"
	if n := reportDiffs(t, fmt.Sprintf("%s mounting %s's upper", implName(reader), implName(writer)),
		diffSnapshots(got, want, name, cmpOpts{ino: true, noDino: reader == "kernel"}), nil); n > 0 {
		t.Logf("ops:\n%s", opsString(ops))
	}
}

func implName(impl string) string {
	if impl == "union" {
		return "unionmount"
	}
	return impl
}

// ociTop is a top lower layer in the OCI image layer format: .wh.NAME
// regular files for deletions and .wh..wh..opq for an opaque directory.
var ociTop = layerSpec{
	{path: ".wh.a", kind: 'f'},
	{path: ".wh.gonedir", kind: 'f'},
	{path: "dir", kind: 'd'},
	{path: "dir/.wh.x", kind: 'f'},
	{path: "dir/z", kind: 'f', data: "z top\n"},
	{path: "odir", kind: 'd', mode: 0750},
	{path: "odir/.wh..wh..opq", kind: 'f'},
	{path: "odir/new", kind: 'f', data: "new in opaque\n"},
	{path: "odir/sub", kind: 'd'},
	{path: "keep", kind: 'f', data: "keep top\n"},
}

// ociTopKernel is ociTop converted to the kernel's format.
var ociTopKernel = layerSpec{
	{path: "a", kind: 'w'},
	{path: "gonedir", kind: 'w'},
	{path: "dir", kind: 'd'},
	{path: "dir/x", kind: 'w'},
	{path: "dir/z", kind: 'f', data: "z top\n"},
	{path: "odir", kind: 'd', mode: 0750, opaque: true},
	{path: "odir/new", kind: 'f', data: "new in opaque\n"},
	{path: "odir/sub", kind: 'd'},
	{path: "keep", kind: 'f', data: "keep top\n"},
}

// ociBase is the layer below.
var ociBase = layerSpec{
	{path: "a", kind: 'f', data: "a base\n"},
	{path: "b", kind: 'f', data: "b base\n"},
	{path: "gonedir", kind: 'd'},
	{path: "gonedir/f", kind: 'f', data: "f\n"},
	{path: "dir", kind: 'd'},
	{path: "dir/x", kind: 'f', data: "x base\n"},
	{path: "dir/y", kind: 'f', data: "y base\n"},
	{path: "odir", kind: 'd'},
	{path: "odir/p", kind: 'f', data: "p base\n"},
	{path: "odir/sub", kind: 'd'},
	{path: "odir/sub/deep", kind: 'f', data: "deep\n"},
	{path: "keep", kind: 'f', data: "keep base\n"},
}

// TestInteropOCIWhiteouts mounts OCI-format lowers with unionmount and
// their kernel-format conversion with kernel overlayfs, and runs the same
// ops on both: the markers must hide what they name and be invisible
// themselves. With -diff.peer=kernel both sides use the converted layers.
func TestInteropOCIWhiteouts(t *testing.T) {
	impl := peerImpl(t)
	base := t.TempDir()
	peerTop := ociTop
	if impl == "kernel" {
		peerTop = ociTopKernel
	}
	p := &pair{
		ref:  newSide(t, filepath.Join(base, "k"), "kernel", "kernel", stackSpec{lowers: []layerSpec{ociTopKernel, ociBase}}),
		peer: newSide(t, filepath.Join(base, "u"), implName(impl), impl, stackSpec{lowers: []layerSpec{peerTop, ociBase}}),
	}
	p.mount(t)
	want, got := p.snapMerged(t)
	reportDiffs(t, "merged tree of OCI layers", diffSnapshots(got, want, "kernel, converted layers", cmpOpts{ino: true}), nil)

	ops := []op{
		opStat(".wh.a"), opStat("a"), opStat("dir/.wh.x"), opStat("dir/x"), opStat("odir/.wh..wh..opq"),
		opStat("odir/p"), opStat("odir/sub/deep"), opStat("gonedir/f"),
		opReaddir(""), opReaddir("dir"), opReaddir("odir"), opReaddir("odir/sub"),
		opCreate("a", "new a"), opMkdir("gonedir", 0755), opReaddir("gonedir"),
		opCreate("dir/x", "new x"), opUnlink("odir/new"), opReaddir("odir"), opRmdir("odir/sub"),
		opMkdir("odir/sub", 0700), opReaddir("odir/sub"), opUnlink("dir/y"), opChmod("odir", 0755),
		opRename("keep", "b", 0), opReaddir(""),
	}
	for i, o := range ops {
		p.do(t, i, o)
	}
	want, got = p.snapMerged(t)
	reportDiffs(t, "merged tree after ops", diffSnapshots(got, want, "kernel, converted layers", cmpOpts{ino: true}), nil)
	p.unmount(t)
	wu, gu := p.snapUpper(t)
	reportDiffs(t, "upper left behind", diffSnapshots(gu, wu, "kernel, converted layers", cmpOpts{}), nil)
}
