package store

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// startRegistry starts a docker-registry (distribution) on a free port of
// 127.0.0.1 with its storage in a temporary directory, and returns its
// address; it is killed at the end of the test.
func startRegistry(t *testing.T) string {
	t.Helper()
	needTool(t, "docker-registry")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yml")
	writeFile(t, config, fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr))
	cmd := exec.Command("docker-registry", "serve", config)
	logFile, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logFile.Name())
			t.Fatalf("registry on %s not up: %v\n%s", addr, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRegistryRoundTrip pushes a committed image from one store to a real
// registry with skopeo and pulls it into another, empty store: the
// manifest digest survives, and the pulled image unpacks to the same tree.
func TestRegistryRoundTrip(t *testing.T) {
	needTool(t, "skopeo")
	addr := startRegistry(t)
	s := newStore(t)
	_, child := commitTestImages(t, s)
	ref := "docker://" + addr + "/lab/child:1"
	run(t, "skopeo", "copy", "-q", "--dest-tls-verify=false", "oci:"+s.Dir()+":child:1", ref)

	s2 := newStore(t)
	run(t, "skopeo", "copy", "-q", "--src-tls-verify=false", ref, "oci:"+s2.Dir()+":"+addr+"/lab/child:1")
	pulled, err := s2.Image(addr + "/lab/child:1")
	if err != nil {
		t.Fatal(err)
	}
	if pulled.Digest != child.Digest {
		t.Errorf("pulled manifest %s, pushed %s", pulled.Digest, child.Digest)
	}
	// Nothing unpacked yet: Lowers unpacks from the pulled blobs.
	if _, err := os.Stat(s2.layerPath(pulled.DiffIDs()[0])); !os.IsNotExist(err) {
		t.Fatalf("layer unpacked before Lowers: %v", err)
	}
	want := filepath.Join(t.TempDir(), "want")
	if os.Geteuid() == 0 {
		buildMerged(t, want)
		checkMerged(t, s2, pulled, want)
	} else {
		// Compare the two stores' exports.
		tmp := t.TempDir()
		f, err := os.Create(filepath.Join(tmp, "orig.tar"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Export(child, f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		extractTar(t, f.Name(), want)
	}
	checkExport(t, s2, pulled, want)
}
