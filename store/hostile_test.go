package store

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// entry is one entry of a test archive.
type entry struct {
	name string
	typ  byte
	data []byte
	link string
}

func tarBytes(t testing.TB, entries []entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		hdr := &tar.Header{Name: e.name, Typeflag: typ, Mode: 0o644, Linkname: e.link, Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func sha(data []byte) string { return fmt.Sprintf("%x", sha256.Sum256(data)) }

func jsonBytes(t testing.TB, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// testLayer is a small valid layer tar.
func testLayer(t testing.TB) []byte {
	return tarBytes(t, []entry{{name: "etc/", typ: tar.TypeDir}, {name: "etc/hello", data: []byte("hello\n")}})
}

// ociEntries builds an OCI archive of one image "hostile:1" with the
// uncompressed layer given, edit changing config, manifest and index as
// JSON maps before their digests are taken.
func ociEntries(t testing.TB, layerTar []byte, edit func(cfg, man, idx map[string]any)) []entry {
	t.Helper()
	cfg := map[string]any{
		"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": []any{"sha256:" + sha(layerTar)}},
	}
	man := map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + sha(layerTar), "size": len(layerTar)}},
	}
	idx := map[string]any{"schemaVersion": 2, "manifests": []any{}}
	if edit != nil {
		edit(cfg, man, nil)
	}
	cfgData := jsonBytes(t, cfg)
	if _, ok := man["config"]; !ok {
		man["config"] = map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + sha(cfgData), "size": len(cfgData)}
	}
	manData := jsonBytes(t, man)
	idx["manifests"] = []any{map[string]any{
		"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + sha(manData), "size": len(manData),
		"annotations": map[string]any{"org.opencontainers.image.ref.name": "hostile:1"},
	}}
	if edit != nil {
		edit(nil, nil, idx)
	}
	return []entry{
		{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{name: "index.json", data: jsonBytes(t, idx)},
		{name: "blobs/", typ: tar.TypeDir},
		{name: "blobs/sha256/", typ: tar.TypeDir},
		{name: "blobs/sha256/" + sha(layerTar), data: layerTar},
		{name: "blobs/sha256/" + sha(cfgData), data: cfgData},
		{name: "blobs/sha256/" + sha(manData), data: manData},
	}
}

// dockerEntries builds a docker-save archive of one image, as skopeo
// writes it (layer.tar a symlink to DIFFID.tar), edit changing the config
// and the manifest.json entry.
func dockerEntries(t testing.TB, layerTar []byte, edit func(cfg map[string]any, m map[string]any)) []entry {
	t.Helper()
	cfg := map[string]any{
		"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": []any{"sha256:" + sha(layerTar)}},
	}
	m := map[string]any{"RepoTags": []any{"hostile:1"}, "Layers": []any{"legacy/layer.tar"}}
	if edit != nil {
		edit(cfg, nil)
	}
	cfgData := jsonBytes(t, cfg)
	m["Config"] = sha(cfgData) + ".json"
	if edit != nil {
		edit(nil, m)
	}
	return []entry{
		{name: sha(layerTar) + ".tar", data: layerTar},
		{name: sha(cfgData) + ".json", data: cfgData},
		{name: "legacy/", typ: tar.TypeDir},
		{name: "legacy/layer.tar", typ: tar.TypeSymlink, link: "../" + sha(layerTar) + ".tar"},
		{name: "manifest.json", data: jsonBytes(t, []any{m})},
	}
}

// replace returns entries with the data of the entry name replaced.
func replace(entries []entry, name string, data []byte) []entry {
	out := append([]entry(nil), entries...)
	for i := range out {
		if out[i].name == name {
			out[i].data = data
		}
	}
	return out
}

func without(entries []entry, name string) []entry {
	var out []entry
	for _, e := range entries {
		if e.name != name {
			out = append(out, e)
		}
	}
	return out
}

func layerDesc(man map[string]any) map[string]any {
	return man["layers"].([]any)[0].(map[string]any)
}

// hostileArchives is the corpus of archives Load must refuse, each with a
// word the error must contain.
func hostileArchives(t testing.TB) []struct {
	name, want string
	data       []byte
} {
	layerTar := testLayer(t)
	other := tarBytes(t, []entry{{name: "x", data: []byte("x")}})
	type c = struct {
		name, want string
		data       []byte
	}
	oci := func(edit func(cfg, man, idx map[string]any)) []entry { return ociEntries(t, layerTar, edit) }
	docker := func(edit func(cfg, m map[string]any)) []entry { return dockerEntries(t, layerTar, edit) }
	tb := func(e []entry) []byte { return tarBytes(t, e) }
	valid := tb(oci(nil))
	return []c{
		{"not a tar", "archive", []byte(strings.Repeat("garbage!", 200))},
		{"truncated", "archive", valid[:len(valid)/2]},
		{"empty tar", "no manifest.json or index.json", tb(nil)},
		{"dotdot entry", `".."`, tb(append(oci(nil), entry{name: "../evil", data: []byte("x")}))},
		{"absolute entry", "absolute", tb(append(oci(nil), entry{name: "/etc/evil", data: []byte("x")}))},
		{"device entry", "unexpected type", tb(append(oci(nil), entry{name: "dev", typ: tar.TypeChar}))},
		{"duplicate entry", "two entries", tb(append(oci(nil), entry{name: "index.json", data: []byte("{}")}))},
		{"duplicate entry spelled ./", "two entries", tb(append(oci(nil), entry{name: "./oci-layout", data: []byte("{}")}))},
		{"huge json", "too large", tb(replace(docker(nil), "manifest.json", []byte("["+strings.Repeat(" ", maxJSON)+"]")))},
		{"missing blob", "missing", tb(without(oci(nil), "blobs/sha256/"+sha(layerTar)))},
		{"blob digest mismatch", "digest", tb(replace(oci(nil), "blobs/sha256/"+sha(layerTar), other))},
		{"layer size mismatch", "size", tb(oci(func(_, man, _ map[string]any) {
			if man != nil {
				layerDesc(man)["size"] = len(layerTar) + 1
			}
		}))},
		{"diff_id mismatch", "diff_id", tb(oci(func(cfg, _, _ map[string]any) {
			if cfg != nil {
				cfg["rootfs"].(map[string]any)["diff_ids"] = []any{"sha256:" + sha(other)}
			}
		}))},
		{"fewer diff_ids than layers", "diff_ids", tb(oci(func(cfg, _, _ map[string]any) {
			if cfg != nil {
				cfg["rootfs"].(map[string]any)["diff_ids"] = []any{}
			}
		}))},
		{"rootfs type", "rootfs.type", tb(oci(func(cfg, _, _ map[string]any) {
			if cfg != nil {
				cfg["rootfs"].(map[string]any)["type"] = "tarball"
			}
		}))},
		{"zstd layer", "zstd", tb(oci(func(_, man, _ map[string]any) {
			if man != nil {
				layerDesc(man)["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
			}
		}))},
		{"unknown layer type", "media type", tb(oci(func(_, man, _ map[string]any) {
			if man != nil {
				layerDesc(man)["mediaType"] = "application/octet-stream"
			}
		}))},
		{"digest with a path", "digest", tb(oci(func(_, man, _ map[string]any) {
			if man != nil {
				layerDesc(man)["digest"] = "sha256:../../../../etc/passwd"
			}
		}))},
		{"sha512 digest", "sha256", tb(oci(func(_, _, idx map[string]any) {
			if idx != nil {
				idx["manifests"].([]any)[0].(map[string]any)["digest"] = "sha512:" + strings.Repeat("ab", 64)
			}
		}))},
		{"no oci-layout", "oci-layout", tb(without(oci(nil), "oci-layout"))},
		{"bad name", "invalid image name", tb(oci(func(_, _, idx map[string]any) {
			if idx != nil {
				idx["manifests"].([]any)[0].(map[string]any)["annotations"] = map[string]any{"org.opencontainers.image.ref.name": "../../Evil"}
			}
		}))},
		{"hostile layer content", "escape", tb(replaceLayer(t, oci, tarBytes(t, []entry{{name: "../../escape", data: []byte("x")}})))},
		{"layer through a symlink", "lnk/x", tb(replaceLayer(t, oci, tarBytes(t, []entry{{name: "lnk", typ: tar.TypeSymlink, link: "/tmp"}, {name: "lnk/x", data: []byte("x")}})))},
		{"docker config path with ..", `".."`, tb(docker(func(_, m map[string]any) {
			if m != nil {
				m["Config"] = "../" + m["Config"].(string)
			}
		}))},
		{"docker absolute layer path", "absolute", tb(docker(func(_, m map[string]any) {
			if m != nil {
				m["Layers"] = []any{"/etc/passwd"}
			}
		}))},
		{"docker symlink out of the archive", "outside", tb(append(docker(func(_, m map[string]any) {
			if m != nil {
				m["Layers"] = []any{"evil/layer.tar"}
			}
		}), entry{name: "evil/layer.tar", typ: tar.TypeSymlink, link: "../../etc/passwd"}))},
		{"docker absolute symlink", "absolute", tb(append(docker(nil), entry{name: "evil.tar", typ: tar.TypeSymlink, link: "/etc/passwd"}))},
		{"docker symlink loop", "links", tb(append(docker(func(_, m map[string]any) {
			if m != nil {
				m["Layers"] = []any{"a"}
			}
		}), entry{name: "a", typ: tar.TypeSymlink, link: "b"}, entry{name: "b", typ: tar.TypeSymlink, link: "a"}))},
		{"docker missing layer", "not in the archive", tb(without(docker(nil), sha(layerTar)+".tar"))},
		{"docker null manifest", "null", tb(replace(docker(nil), "manifest.json", []byte("null")))},
		{"docker layer count", "diff_ids", tb(docker(func(cfg, _ map[string]any) {
			if cfg != nil {
				cfg["rootfs"].(map[string]any)["diff_ids"] = []any{"sha256:" + sha(layerTar), "sha256:" + sha(layerTar)}
			}
		}))},
		{"docker diff_id mismatch", "diff_id", tb(docker(func(cfg, _ map[string]any) {
			if cfg != nil {
				cfg["rootfs"].(map[string]any)["diff_ids"] = []any{"sha256:" + sha(other)}
			}
		}))},
		{"docker config digest mismatch", "digest", tb(renameConfig(t, docker(nil), sha(other)+".json"))},
	}
}

// renameConfig renames the config of a docker archive to name, which is
// not its digest.
func renameConfig(t testing.TB, entries []entry, name string) []entry {
	t.Helper()
	out := append([]entry(nil), entries...)
	for i, e := range out {
		if strings.HasSuffix(e.name, ".json") && e.name != "manifest.json" {
			out[i].name = name
		}
		if e.name == "manifest.json" {
			var ms []map[string]any
			if err := json.Unmarshal(e.data, &ms); err != nil {
				t.Fatal(err)
			}
			ms[0]["Config"] = name
			out[i].data = jsonBytes(t, ms)
		}
	}
	return out
}

// replaceLayer builds an OCI archive whose layer is l.
func replaceLayer(t testing.TB, oci func(func(cfg, man, idx map[string]any)) []entry, l []byte) []entry {
	t.Helper()
	return append(oci(func(cfg, man, _ map[string]any) {
		if cfg != nil {
			cfg["rootfs"].(map[string]any)["diff_ids"] = []any{"sha256:" + sha(l)}
		}
		if man != nil {
			d := layerDesc(man)
			d["digest"], d["size"] = "sha256:"+sha(l), len(l)
		}
	}), entry{name: "blobs/sha256/" + sha(l), data: l})
}

func TestLoadHostile(t *testing.T) {
	// The unedited archives load: what the corpus changes is what is
	// refused.
	for _, valid := range [][]entry{ociEntries(t, testLayer(t), nil), dockerEntries(t, testLayer(t), nil)} {
		s := newStore(t)
		if imgs, err := s.Load(bytes.NewReader(tarBytes(t, valid)), nil); err != nil || len(imgs) != 1 || imgs[0].Name != "hostile:1" {
			t.Fatalf("valid archive: %v, %v", imgs, err)
		}
	}
	s := newStore(t)
	commitTestImages(t, s)
	before := snapshot(t, s.Dir())
	for _, tc := range hostileArchives(t) {
		t.Run(tc.name, func(t *testing.T) {
			imgs, err := s.Load(bytes.NewReader(tc.data), nil)
			if err == nil {
				t.Fatalf("loaded %v", imgs)
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q, want one line with %q", err, tc.want)
			}
			t.Log(err)
			if after := snapshot(t, s.Dir()); after != before {
				t.Errorf("the store changed:\n%s\nwas:\n%s", after, before)
			}
		})
	}
}
