package imagestore

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/internal/errdefs"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    BuildConfig
		wantErr string
	}{
		{name: "defaults", in: `{}`, want: BuildConfig{KernelPackage: DefaultKernelPackage, DiskSize: "4G"}},
		{name: "full", in: `{"packages": ["git", "jq", "git", "g++"], "kernel_package": "linux-image-6.1.0-56-cloud-amd64", "disk_size": "8192m"}`,
			want: BuildConfig{Packages: []string{"g++", "git", "jq"}, KernelPackage: "linux-image-6.1.0-56-cloud-amd64", DiskSize: "8G"}},
		{name: "bytes", in: `{"disk_size": "1610612736"}`, want: BuildConfig{KernelPackage: DefaultKernelPackage, DiskSize: "1536M"}},
		{name: "odd bytes", in: `{"disk_size": "100000001"}`, want: BuildConfig{KernelPackage: DefaultKernelPackage, DiskSize: "100000001"}},
		{name: "lower k", in: `{"disk_size": "1048576k"}`, want: BuildConfig{KernelPackage: DefaultKernelPackage, DiskSize: "1G"}},
		{name: "unknown field", in: `{"pakages": ["git"]}`, wantErr: `unknown field "pakages"`},
		{name: "empty", in: "  \n", wantErr: "empty"},
		{name: "not json", in: `packages: [git]`, wantErr: "build config"},
		{name: "trailing", in: `{} {}`, wantErr: "after the JSON"},
		{name: "wrong type", in: `{"packages": "git"}`, wantErr: "packages"},
		{name: "option injection", in: `{"packages": ["-oDebug::pkgAcquire=1"]}`, wantErr: "not a Debian package name"},
		{name: "upper case", in: `{"packages": ["Git"]}`, wantErr: "not a Debian package name"},
		{name: "one char", in: `{"packages": ["g"]}`, wantErr: "not a Debian package name"},
		{name: "version pin", in: `{"packages": ["git=1:2.39"]}`, wantErr: "not a Debian package name"},
		{name: "arch", in: `{"packages": ["git:amd64"]}`, wantErr: "not a Debian package name"},
		{name: "space", in: `{"packages": ["git jq"]}`, wantErr: "not a Debian package name"},
		{name: "bad kernel", in: `{"kernel_package": "--help"}`, wantErr: "kernel_package"},
		{name: "size unit", in: `{"disk_size": "4X"}`, wantErr: "not a size"},
		{name: "size fraction", in: `{"disk_size": "4.5G"}`, wantErr: "not a size"},
		{name: "size negative", in: `{"disk_size": "-4G"}`, wantErr: "not a size"},
		{name: "size empty unit", in: `{"disk_size": "G"}`, wantErr: "not a size"},
		{name: "size zero", in: `{"disk_size": "0"}`, wantErr: "smaller than the minimum"},
		{name: "size small", in: `{"disk_size": "1M"}`, wantErr: "smaller than the minimum"},
		{name: "size huge", in: `{"disk_size": "2T"}`, wantErr: "larger than the maximum"},
		{name: "size overflow", in: `{"disk_size": "99999999999999T"}`, wantErr: "larger than the maximum"},
		{name: "size too many digits", in: `{"disk_size": "999999999999999999999"}`, wantErr: "not a size"},
		{name: "size petabytes", in: `{"disk_size": "1P"}`, wantErr: "not a size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfig(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errdefs.ErrInvalid) {
					t.Fatalf("ParseConfig = %+v, %v; want error about %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseConfig = %+v, %v; want %+v", got, err, tt.want)
			}
			// Resolving a resolved config changes nothing.
			again, err := got.Resolve()
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("Resolve again = %+v, %v", again, err)
			}
		})
	}
}

func TestDiskBytes(t *testing.T) {
	for in, want := range map[string]int64{"": 4 << 30, "4G": 4 << 30, "1536M": 1536 << 20, "1T": 1 << 40} {
		got, err := BuildConfig{DiskSize: in}.DiskBytes()
		if err != nil || got != want {
			t.Errorf("DiskBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}
