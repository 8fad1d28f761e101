package netpolicy

import (
	"strings"
	"testing"

	"github.com/gondolin/gondolin/vm/agent"
)

// The agent writes the CA where CAEnv points TLS libraries; the two
// packages cannot share the constants (the agent must not link gVisor),
// so this test keeps them in step.
func TestGuestCAPaths(t *testing.T) {
	if agent.GuestCABundle != GuestCABundle || agent.GuestCAFile != GuestCAFile {
		t.Fatalf("agent writes %s and %s; netpolicy points at %s and %s",
			agent.GuestCABundle, agent.GuestCAFile, GuestCABundle, GuestCAFile)
	}
	env := strings.Join(CAEnv(), " ")
	for _, want := range []string{"SSL_CERT_FILE=" + GuestCABundle, "REQUESTS_CA_BUNDLE=" + GuestCABundle,
		"CURL_CA_BUNDLE=" + GuestCABundle, "NODE_EXTRA_CA_CERTS=" + GuestCAFile} {
		if !strings.Contains(env, want) {
			t.Errorf("CAEnv lacks %s", want)
		}
	}
}
