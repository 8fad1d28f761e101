package imagestore

import (
	"errors"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/internal/errdefs"
)

func TestParseRef(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		in      string
		want    Ref
		wantErr string
	}{
		{in: "default", want: Ref{"default", "latest"}},
		{in: "default:latest", want: Ref{"default", "latest"}},
		{in: "my-img.v2_x:V1.0-rc_1", want: Ref{"my-img.v2_x", "V1.0-rc_1"}},
		{in: "0:_", want: Ref{"0", "_"}},
		{in: long + ":" + strings.Repeat("T", 128), want: Ref{long, strings.Repeat("T", 128)}},
		{in: "", wantErr: "empty"},
		{in: ":latest", wantErr: "name"},
		{in: "Default", wantErr: "name"},
		{in: "..", wantErr: "name"},
		{in: "../x", wantErr: "name"},
		{in: ".hidden", wantErr: "name"},
		{in: "-o", wantErr: "name"},
		{in: "a/b", wantErr: "name"},
		{in: "a b", wantErr: "name"},
		{in: long + "a", wantErr: "name"},
		{in: "name:", wantErr: "tag"},
		{in: "name:..", wantErr: "tag"},
		{in: "name:.x", wantErr: "tag"},
		{in: "name:-x", wantErr: "tag"},
		{in: "name:a/b", wantErr: "tag"},
		{in: "name:a:b", wantErr: "tag"},
		{in: "name:" + strings.Repeat("t", 129), wantErr: "tag"},
		{in: "sha256:abc", wantErr: "reserved"},
		{in: "name\x00:t", wantErr: "name"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRef(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errdefs.ErrInvalid) {
					t.Fatalf("ParseRef(%q) = %v, %v; want error about %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRef(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			if again, err := ParseRef(got.String()); err != nil || again != got {
				t.Fatalf("round trip %q: %v, %v", got.String(), again, err)
			}
		})
	}
}
