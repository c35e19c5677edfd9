package layer

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// exportUmociLayout writes an OCI image layout at dir holding one image,
// tagged tag, of the layer tars (base first), as image-layout.md describes
// it: oci-layout, index.json naming the manifest with
// org.opencontainers.image.ref.name, and every blob (gzip layers, config
// with their diff_ids, manifest) under blobs/sha256.
func exportUmociLayout(t *testing.T, dir, tag string, tars ...[]byte) {
	t.Helper()
	blob := func(b []byte) map[string]any {
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", h), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return map[string]any{"digest": "sha256:" + h, "size": len(b)}
	}
	marshal := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var layers []map[string]any
	var diffIDs []string
	for _, tb := range tars {
		sum := sha256.Sum256(tb)
		diffIDs = append(diffIDs, "sha256:"+hex.EncodeToString(sum[:]))
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(tb)
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		d := blob(gz.Bytes())
		d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
		layers = append(layers, d)
	}
	config := blob(marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	}))
	config["mediaType"] = "application/vnd.oci.image.config.v1+json"
	manifest := blob(marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        config,
		"layers":        layers,
	}))
	manifest["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
	manifest["annotations"] = map[string]string{"org.opencontainers.image.ref.name": tag}
	index := marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []any{manifest},
	})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestApplyAndExportMatchUmoci checks our unpacking and flattening against
// umoci, the strict OCI unpacker: two layers applied by Apply and mounted
// with kernel overlayfs show the tree umoci unpack makes of an image of
// the same two layer tars, and Export of the two layers is that tree too.
func TestApplyAndExportMatchUmoci(t *testing.T) {
	apRequireRoot(t)
	umoci, err := exec.LookPath("umoci")
	if err != nil {
		t.Skip("needs umoci")
	}
	top, base := exportTestTars(t)
	work := t.TempDir()

	layout := filepath.Join(work, "image")
	exportUmociLayout(t, layout, "v1", base, top)
	bundle := filepath.Join(work, "bundle")
	if out, err := exec.Command(umoci, "unpack", "--image", layout+":v1", bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	want := applyTreeList(t, filepath.Join(bundle, "rootfs"))

	layers := exportTestLayers(t)
	merged := filepath.Join(work, "merged")
	if err := os.Mkdir(merged, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, "lowerdir="+layers[0]+":"+layers[1]); err != nil {
		t.Skipf("kernel overlay mount: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(merged, 0); err != nil {
			t.Errorf("unmount %s: %v", merged, err)
		}
	})
	applyDiff(t, "kernel overlay of Apply's layers vs umoci unpack", applyTreeList(t, merged), want)

	var exported bytes.Buffer
	if _, err := Export(&exported, layers, Options{}); err != nil {
		t.Fatal(err)
	}
	applyDiff(t, "Export vs umoci unpack", applyTarList(t, &exported), want)
	applyDiff(t, "umoci unpack vs the expected tree", want, exportTestWant)
}
