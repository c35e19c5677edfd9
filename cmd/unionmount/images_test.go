package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs the application in this process with stdin, returning what
// it wrote to stdout.
func runCLI(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	tmp := t.TempDir()
	in := filepath.Join(tmp, "stdin")
	if err := os.WriteFile(in, stdin, 0o644); err != nil {
		t.Fatal(err)
	}
	inf, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer inf.Close()
	outf, err := os.Create(filepath.Join(tmp, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	defer outf.Close()
	oldIn, oldOut := os.Stdin, os.Stdout
	os.Stdin, os.Stdout = inf, outf
	defer func() { os.Stdin, os.Stdout = oldIn, oldOut }()
	app := New()
	err = app.Run(flagsFirst(app, append([]string{"unionmount"}, args...)))
	out, rerr := os.ReadFile(outf.Name())
	if rerr != nil {
		t.Fatal(rerr)
	}
	return string(out), err
}

// rootfsTar is a small plain rootfs tarball.
func rootfsTar(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte("hi\n")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func tarNames(t *testing.T, data []byte) string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return strings.Join(names, " ")
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
}

func TestImageCommands(t *testing.T) {
	tmp := t.TempDir()
	st, st2 := filepath.Join(tmp, "store"), filepath.Join(tmp, "store2")
	out, err := runCLI(t, rootfsTar(t), "import", "-", "base:1", "-m", "hello", "--store", st)
	if err != nil || !strings.HasPrefix(out, "sha256:") {
		t.Fatalf("import: %q, %v", out, err)
	}
	id := strings.TrimPrefix(strings.TrimSpace(out), "sha256:")[:12]
	out, err = runCLI(t, nil, "images", "--store", st)
	if err != nil || !strings.Contains(out, "NAME") || !strings.Contains(out, "base:1") || !strings.Contains(out, id) {
		t.Errorf("images: %q, %v", out, err)
	}
	out, err = runCLI(t, nil, "history", "base:1", "--store", st)
	if err != nil || !strings.Contains(out, "hello") || !strings.Contains(out, "unionmount import") {
		t.Errorf("history: %q, %v", out, err)
	}
	archive := filepath.Join(tmp, "save.tar")
	if _, err := runCLI(t, nil, "save", "base:1", "-o", archive, "--store", st); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	if names := tarNames(t, data); !strings.Contains(names, "manifest.json") || !strings.Contains(names, "index.json") {
		t.Errorf("saved archive holds %s", names)
	}
	out, err = runCLI(t, data, "load", "--store", st2)
	if err != nil || out != "Loaded image: base:1\n" {
		t.Errorf("load: %q, %v", out, err)
	}
	out, err = runCLI(t, nil, "export", id, "--store", st2)
	if err != nil || tarNames(t, []byte(out)) != "etc/ etc/hello" {
		t.Errorf("export: %v, %v", tarNames(t, []byte(out)), err)
	}
	if _, err := runCLI(t, nil, "rmi", "base:1", "nothere", "--store", st2); err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "nothere") {
		t.Errorf("rmi of a missing image: %v", err)
	}
	if out, _ := runCLI(t, nil, "images", "-q", "--store", st2); out != "" {
		t.Errorf("images after rmi: %q", out)
	}
	if _, err := runCLI(t, nil, "load", "--store", st2); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("load of nothing: %v", err)
	}
	if _, err := runCLI(t, nil, "import", "-", "Bad Name", "--store", st2); err == nil {
		t.Error("import accepted a bad name")
	}
}
