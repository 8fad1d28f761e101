package debian

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/internal/progress"
)

func TestParseClosure(t *testing.T) {
	out := `bash
  PreDepends: libc6
  Depends: base-files
 |Depends: debianutils
libc6
  Depends: libgcc-s1
<awk>
    gawk
    mawk
mawk
libc6:i386
gawk
  PreDepends: libc6
bash
`
	names, virtuals := parseClosure([]byte(out))
	if want := []string{"bash", "gawk", "libc6", "mawk"}; !slices.Equal(names, want) {
		t.Fatalf("parseClosure names = %v, want %v", names, want)
	}
	if want := []string{"awk"}; !slices.Equal(virtuals, want) {
		t.Fatalf("parseClosure virtuals = %v, want %v", virtuals, want)
	}
}

func TestParseKernelDepends(t *testing.T) {
	meta := "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
	if got := parseKernelDepends("linux-image-cloud-amd64", []byte(meta)); got != "linux-image-6.1.0-56-cloud-amd64" {
		t.Errorf("meta package: %q", got)
	}
	concrete := "linux-image-6.1.0-56-cloud-amd64\n  Depends: kmod\n  Depends: linux-base\n |Depends: initramfs-tools\n  Depends: <linux-initramfs-tool>\n"
	if got := parseKernelDepends("linux-image-6.1.0-56-cloud-amd64", []byte(concrete)); got != "linux-image-6.1.0-56-cloud-amd64" {
		t.Errorf("concrete package: %q", got)
	}
}

func TestParseShow(t *testing.T) {
	sum := strings.Repeat("a", 64)
	out := "Package: bash\nVersion: 5.2.15-2+b13\nArchitecture: amd64\nSize: 1490652\nSHA256: " + sum + "\nDescription: GNU\n shell\n\n" +
		"Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nArchitecture: amd64\nSHA256: " + sum + "\n\n"
	debs, err := parseShow([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if d := debs["bash"]; d.Version != "5.2.15-2+b13" || d.Size != 1490652 || d.fileName() != "bash_5.2.15-2+b13_amd64.deb" {
		t.Errorf("bash = %+v", d)
	}
	if d := debs["busybox-static"]; d.fileName() != "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb" {
		t.Errorf("busybox file name %q", d.fileName())
	}
	for _, bad := range []string{
		"Package: x\nVersion: 1/../../2\nArchitecture: amd64\nSHA256: " + sum + "\n",
		"Package: x\nVersion: 1\nArchitecture: amd/64\nSHA256: " + sum + "\n",
		"Package: -x\nVersion: 1\nArchitecture: amd64\nSHA256: " + sum + "\n",
		"Package: xx\nVersion: 1\nArchitecture: amd64\nSHA256: short\n",
	} {
		if _, err := parseShow([]byte(bad)); err == nil {
			t.Errorf("parseShow accepted %q", bad)
		}
	}
}

func TestFetch(t *testing.T) {
	cache := t.TempDir()
	content := map[string]string{"aa": "package aa", "bb": "package bb"}
	var debs []deb
	for name, body := range content {
		sum := sha256.Sum256([]byte(body))
		debs = append(debs, deb{Name: name, Version: "1:1.0", Arch: "amd64", SHA256: hex.EncodeToString(sum[:])})
	}
	var asked [][]string
	fake := func(body map[string]string) downloadFunc {
		return func(ctx context.Context, dir string, debs []deb, p progress.Reporter) error {
			var names []string
			for _, d := range debs {
				names = append(names, d.Name)
				os.WriteFile(filepath.Join(dir, d.fileName()), []byte(body[d.Name]), 0o644)
			}
			slices.Sort(names)
			asked = append(asked, names)
			return nil
		}
	}
	paths, err := fetch(context.Background(), cache, debs, fake(content), progress.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(paths["aa"]); string(got) != "package aa" || filepath.Base(paths["aa"]) != "aa_1%3a1.0_amd64.deb" {
		t.Fatalf("aa at %s: %q", paths["aa"], got)
	}
	// Present and intact: nothing to download. A corrupt one is fetched again.
	os.WriteFile(paths["bb"], []byte("truncat"), 0o644)
	if _, err := fetch(context.Background(), cache, debs, fake(content), progress.Discard); err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(asked, [][]string{{"aa", "bb"}, {"bb"}}, slices.Equal) {
		t.Fatalf("downloads %v", asked)
	}
	// A download that does not match apt's sha256 is an error.
	os.Remove(paths["aa"])
	_, err = fetch(context.Background(), cache, debs, fake(map[string]string{"aa": "evil"}), progress.Discard)
	if err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("bad download: %v", err)
	}
	boom := errors.New("boom")
	os.Remove(paths["aa"])
	_, err = fetch(context.Background(), cache, debs, func(context.Context, string, []deb, progress.Reporter) error { return boom }, progress.Discard)
	if !errors.Is(err, boom) {
		t.Fatalf("failed download: %v", err)
	}
}

// TestClosureRejectsUnknownAndVirtual asks the real apt: it drops unknown
// names silently and does not expand virtual ones.
func TestClosureRejectsUnknownAndVirtual(t *testing.T) {
	if _, err := lookTool("apt-cache"); err != nil {
		t.Skip(err)
	}
	if _, err := showPackages(context.Background(), []string{"bash"}); err != nil {
		t.Skipf("apt has no package lists: %v", err)
	}
	ctx := context.Background()
	for pkgs, wantErr := range map[string]string{
		"bash nosuchpackage-gondolin": "package nosuchpackage-gondolin is unknown to apt",
		"bash awk":                    "package awk is virtual",
	} {
		_, err := closure(ctx, strings.Fields(pkgs))
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("closure(%s) = %v; want %q", pkgs, err, wantErr)
		}
	}
	names, err := closure(ctx, []string{"bash"})
	if err != nil || !slices.Contains(names, "libc6") {
		t.Errorf("closure(bash) = %v, %v", names, err)
	}
}
