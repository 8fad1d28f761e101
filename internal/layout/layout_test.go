package layout

import (
	"slices"
	"testing"
)

func TestServiceEnv(t *testing.T) {
	environ := []string{"PATH=/usr/bin", "HOME=/home/me", "GH_TOKEN=ghp_secret", "AWS_SECRET_ACCESS_KEY=x",
		"GONDOLIN_ACCEL=tcg", "SSH_AUTH_SOCK=/run/agent", "LANG=C.UTF-8", "NOEQUALS", "PATHX=1", "SSL_CERT_FILE=/ca.pem"}
	got := ServiceEnv(environ, EnvHome+"=/h")
	want := []string{"PATH=/usr/bin", "HOME=/home/me", "GONDOLIN_ACCEL=tcg", "LANG=C.UTF-8", "SSL_CERT_FILE=/ca.pem", "GONDOLIN_HOME=/h"}
	if !slices.Equal(got, want) {
		t.Fatalf("ServiceEnv = %q, want %q", got, want)
	}
}
