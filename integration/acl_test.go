package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestACLPermissions checks that the kernel's permission checks through the
// mount honour POSIX ACLs as ext4 does: each case runs as an unprivileged
// user on a plain directory (the oracle) and through the union, on files
// that exist only in the lower.
func TestACLPermissions(t *testing.T) {
	needRoot(t)
	for _, tool := range []string{"setfacl", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install acl util-linux)", tool)
		}
	}
	lowers, upper, mnt := semStack(t, 1)
	native := t.TempDir()
	// The test's temporary directories and their parent, so the user
	// can reach the files.
	for _, d := range []string{filepath.Dir(lowers[0]), native, filepath.Dir(native)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct{ name, acl string }{
		{"granted", "u:65534:r"},
		{"masked", "u:65534:r,m::-"},
		{"group", "g:65534:r"},
		{"none", "u:1000:r"},
	}
	for _, root := range []string{lowers[0], native} {
		for _, c := range cases {
			p := filepath.Join(root, c.name)
			semWrite(t, p, "secret\n", 0o600)
			if out, err := exec.Command("setfacl", "-m", c.acl, p).CombinedOutput(); err != nil {
				t.Fatalf("setfacl %s: %v: %s", c.acl, err, out)
			}
		}
	}
	semMount(t, lowers, upper, mnt)
	asNobody := func(args ...string) error {
		return exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups"}, args...)...).Run()
	}
	for _, c := range cases {
		want := asNobody("cat", filepath.Join(native, c.name))
		got := asNobody("cat", filepath.Join(mnt, c.name))
		if (got == nil) != (want == nil) {
			t.Errorf("%s (%s): read through the mount: %v; on ext4: %v", c.name, c.acl, got, want)
		}
	}
	if asNobody("cat", filepath.Join(native, "granted")) != nil {
		t.Error("the oracle denies what the ACL grants: the test would prove nothing")
	}
}
