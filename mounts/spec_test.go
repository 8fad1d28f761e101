package mounts

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseHostFS(t *testing.T) {
	dir := t.TempDir()
	colon := filepath.Join(dir, "a:b")
	file := filepath.Join(dir, "file")
	link := filepath.Join(dir, "link")
	os.Mkdir(colon, 0o755)
	os.WriteFile(file, nil, 0o644)
	os.Symlink(colon, link)
	t.Chdir(dir)

	tests := []struct {
		in      string
		host    string
		guest   string
		ro      bool
		wantErr string
	}{
		{in: dir + ":/workspace", host: dir, guest: "/workspace"},
		{in: dir + ":/workspace:ro", host: dir, guest: "/workspace", ro: true},
		{in: dir + ":/workspace:rw", host: dir, guest: "/workspace"},
		{in: dir + ":/a/../b/./c/", host: dir, guest: "/b/c"},
		{in: ".:/w", host: dir, guest: "/w"},
		{in: colon + ":/w", host: colon, guest: "/w"},
		{in: link + ":/w:ro", host: colon, guest: "/w", ro: true},
		{in: "a:b:/w", host: colon, guest: "/w"},
		{in: dir, wantErr: "want HOST:GUEST"},
		{in: ":/w", wantErr: "want HOST:GUEST"},
		{in: dir + ":", wantErr: "empty guest path"},
		{in: dir + ":w", wantErr: "not absolute"},
		{in: dir + ":/", wantErr: "guest's root"},
		{in: dir + ":/a/..", wantErr: "guest's root"},
		{in: dir + ":/proc", wantErr: "reserved"},
		{in: dir + ":/sys/kernel", wantErr: "reserved"},
		{in: dir + ":/dev/shm", wantErr: "reserved"},
		{in: dir + "/missing:/w", wantErr: "does not exist"},
		{in: file + ":/w", wantErr: "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			spec, err := ParseHostFS(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errBadMount) {
					t.Fatalf("ParseHostFS(%q) = %+v, %v; want an errBadMount containing %q", tt.in, spec, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if spec.HostPath != tt.host || spec.GuestPath != tt.guest || spec.ReadOnly != tt.ro || spec.Memory || spec.ID == "" || spec.Root.Ino == 0 {
				t.Fatalf("ParseHostFS(%q) = %+v", tt.in, spec)
			}
			b, _ := json.Marshal(spec)
			var back Spec
			if err := json.Unmarshal(b, &back); err != nil || back != spec {
				t.Fatalf("JSON round trip: %s -> %+v, %v", b, back, err)
			}
		})
	}
}

func TestParseMemFS(t *testing.T) {
	spec, err := ParseMemFS("/scratch/")
	if err != nil || spec != (Spec{GuestPath: "/scratch", Memory: true}) {
		t.Fatalf("ParseMemFS = %+v, %v", spec, err)
	}
	for _, bad := range []string{"", "scratch", "/", "/proc/x", "/a:b"} {
		if _, err := ParseMemFS(bad); !errors.Is(err, errBadMount) {
			t.Errorf("ParseMemFS(%q): %v, want errBadMount", bad, err)
		}
	}
}

func TestCheck(t *testing.T) {
	host := func(guest string) Spec {
		s, err := ParseHostFS(t.TempDir() + ":" + guest)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	mem := func(guest string) Spec {
		s, err := ParseMemFS(guest)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	ok := [][]Spec{
		nil,
		{host("/a"), host("/b"), mem("/c")},
		{host("/a"), host("/ab")},
	}
	for _, specs := range ok {
		if err := Check(specs); err != nil {
			t.Errorf("Check(%v): %v", specs, err)
		}
	}
	bad := map[string][]Spec{
		"mounted twice": {host("/a"), mem("/a")},
		"nested":        {host("/a"), mem("/a/b")},
		"nested ":       {mem("/a/b/c"), host("/a")},
		"lacks an ID":   {{HostPath: t.TempDir(), GuestPath: "/x"}},
		"clean":         {{ID: "m1", HostPath: t.TempDir() + "/../x", GuestPath: "/x"}},
	}
	for want, specs := range bad {
		err := Check(specs)
		if !errors.Is(err, errBadMount) || !strings.Contains(err.Error(), strings.TrimSpace(want)) {
			t.Errorf("Check(%v) = %v, want %q", specs, err, want)
		}
	}
}

// TestCheckHostOverlap: a host directory mounted inside another (or twice)
// would let the guest move or replace one mount through the other.
func TestCheckHostOverlap(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"src/proj", "srcx", "other"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	host := func(h, guest string) Spec {
		if !filepath.IsAbs(h) {
			h = filepath.Join(dir, h)
		}
		s, err := ParseHostFS(h + ":" + guest)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	mem := func(guest string) Spec {
		s, _ := ParseMemFS(guest)
		return s
	}
	tests := []struct {
		name  string
		specs []Spec
		want  string // "" for no error
	}{
		{"inner read-only", []Spec{host("src", "/src"), host("src/proj", "/workspace:ro")}, "inside"},
		{"inner first", []Spec{host("src/proj", "/workspace:ro"), host("src", "/src")}, "inside"},
		{"both read-only", []Spec{host("src", "/src:ro"), host("src/proj", "/workspace:ro")}, "inside"},
		{"same twice", []Spec{host("src", "/a"), host("src", "/b:ro")}, "same host directory"},
		{"host root", []Spec{host("/", "/host:ro"), host("other", "/b")}, "inside"},
		{"name prefix only", []Spec{host("src", "/a"), host("srcx", "/b")}, ""},
		{"siblings", []Spec{host("src/proj", "/a"), host("other", "/b"), host("srcx", "/c")}, ""},
		{"with memory mounts", []Spec{mem("/m"), host("src", "/a"), mem("/n"), host("other", "/b")}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.specs)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, errBadMount) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Check = %v, want an errBadMount containing %q", err, tt.want)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			for _, s := range tt.specs {
				if !s.Memory && !strings.Contains(msg, "--mount-hostfs "+s.String()) {
					t.Errorf("error %q does not name --mount-hostfs %s", msg, s)
				}
			}
		})
	}
}
