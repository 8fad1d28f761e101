package sessions

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// SecretValues returns the values of the spec's secrets, to send apart
// from the spec (they never serialise with it).
func (s *Spec) SecretValues() map[string]string {
	if s.Policy == nil || len(s.Policy.Secrets) == 0 {
		return nil
	}
	out := map[string]string{}
	for _, sec := range s.Policy.Secrets {
		if sec.Value.IsSet() {
			out[sec.Name] = sec.Value.Reveal()
		}
	}
	return out
}

// applySecretValues puts values received apart back into the policy.
func (s *Spec) applySecretValues(values map[string]string) error {
	for name, v := range values {
		if s.Policy == nil {
			return invalidf("a value for secret %s, but no secrets in the policy", name)
		}
		found := false
		for i := range s.Policy.Secrets {
			if s.Policy.Secrets[i].Name == name {
				s.Policy.Secrets[i].Value = netpolicy.NewSecretValue(v)
				found = true
			}
		}
		if !found {
			return invalidf("a value for secret %s, which the policy does not have", name)
		}
	}
	return nil
}

// restoreNetwork rebuilds the network of an adopted VM from its recorded
// policy and reconnects it to the VM's NIC. Secret values were in the old
// supervisor's memory only: such secrets block their requests until the
// user sets them again.
func (s *session) restoreNetwork() error {
	p := s.rec.Spec.policy()
	if s.state.Policy != nil {
		p = s.state.Policy.Clone()
	}
	n, err := s.sv.rt.NewNetwork(p, s.sv.reg.dir(s.rec.ID))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", filepath.Join(s.sv.reg.dir(s.rec.ID), layout.NetSocket))
	if err != nil {
		n.Close()
		return err
	}
	if err := n.Attach(conn); err != nil {
		n.Close()
		return err
	}
	s.net = n
	return nil
}

// networkErrorsLocked reports what the user must fix about the network.
func (s *session) networkErrorsLocked() []string {
	if s.net == nil {
		return nil
	}
	var out []string
	p := s.net.Policy()
	for _, name := range p.MissingSecrets() {
		out = append(out, fmt.Sprintf("secret %s has no value (the supervisor restarted): set it with: gondolin policy secret set %s %s@HOSTS", name, s.rec.ID, name))
	}
	for _, id := range p.MissingSSHPassphrases() {
		out = append(out, fmt.Sprintf("the passphrase of ssh credential %s is gone (the supervisor restarted): stop and resume the session with its environment set", id))
	}
	return out
}

// PolicyView is a session's network policy as the API shows it: no
// secret values, but which secrets have one.
type PolicyView struct {
	Policy  netpolicy.Policy `json:"policy"`
	Missing []string         `json:"missing_secrets,omitempty"`
}

// PolicyChange is one live edit of a session's network policy.
type PolicyChange struct {
	Allow        string  `json:"allow,omitempty"`         // add an allowed host pattern
	Deny         string  `json:"deny,omitempty"`          // add a denied host pattern
	Unallow      string  `json:"unallow,omitempty"`       // remove an allowed pattern
	SetSecret    string  `json:"set_secret,omitempty"`    // NAME[:url]@HOST[,HOST...] (netpolicy.Secret.Spec)
	SecretValue  *string `json:"secret_value,omitempty"`  // its value (never stored)
	RemoveSecret string  `json:"remove_secret,omitempty"` // NAME
}

// policy returns the session's network policy.
func (s *session) policyView() (PolicyView, error) {
	s.mu.Lock()
	n := s.net
	s.mu.Unlock()
	if n == nil {
		return PolicyView{}, errorf(errdefs.ErrUnavailable, "session %s has no running network", s.rec.ID)
	}
	p := n.Policy()
	return PolicyView{Policy: p, Missing: p.MissingSecrets()}, nil
}

// changePolicy applies one edit to the running network (the next request
// sees it), records it, and gives guest processes started from now on the
// new secrets' placeholders.
func (s *session) changePolicy(ctx context.Context, ch PolicyChange) (PolicyView, error) {
	s.mu.Lock()
	n, a := s.net, s.agent
	s.mu.Unlock()
	if n == nil {
		return PolicyView{}, errorf(errdefs.ErrUnavailable, "session %s has no running network", s.rec.ID)
	}
	secretsChanged := ch.SetSecret != "" || ch.RemoveSecret != ""
	err := n.UpdatePolicy(func(p *netpolicy.Policy) error {
		if ch.Allow != "" {
			if err := p.AllowHost(ch.Allow); err != nil {
				return err
			}
		}
		if ch.Unallow != "" {
			kept := p.Allow[:0]
			found := false
			for _, pat := range p.Allow {
				if pat == strings.ToLower(ch.Unallow) {
					found = true
					continue
				}
				kept = append(kept, pat)
			}
			if !found {
				return errorf(errdefs.ErrNotFound, "%q is not an allowed pattern", ch.Unallow)
			}
			p.Allow = kept
		}
		if ch.Deny != "" {
			if err := p.DenyHost(ch.Deny); err != nil {
				return err
			}
		}
		if ch.SetSecret != "" {
			spec := ch.SetSecret
			if ch.SecretValue != nil {
				spec += "=" + *ch.SecretValue
			}
			sec, err := netpolicy.ParseHostSecret(spec, func(string) string { return "" })
			if err != nil {
				return err
			}
			p.SetSecret(sec)
		}
		if ch.RemoveSecret != "" && !p.RemoveSecret(ch.RemoveSecret) {
			return errorf(errdefs.ErrNotFound, "no secret %s", ch.RemoveSecret)
		}
		return nil
	})
	if err != nil {
		return PolicyView{}, err
	}
	// Read under s.mu, so that of two edits the one recorded last holds
	// both (the write order is the order of taking s.mu).
	s.mu.Lock()
	p := n.Policy()
	if s.net == n {
		s.state.Policy = &p
	}
	save := s.copyStateLocked()
	s.mu.Unlock()
	save.write()
	if secretsChanged && a != nil {
		a.Setup(ctx, agentproto.Setup{Env: n.GuestEnv()})
	}
	s.sv.emit(Event{Type: EventPolicy, Session: s.rec.ID})
	return PolicyView{Policy: p, Missing: p.MissingSecrets()}, nil
}

// netEvents returns the network's recorded decisions and, with follow, a
// channel of new ones until ctx ends.
func (s *session) netEvents(ctx context.Context, follow bool) ([]netpolicy.Event, <-chan netpolicy.Event, error) {
	s.mu.Lock()
	n := s.net
	s.mu.Unlock()
	if n == nil {
		return nil, nil, errorf(errdefs.ErrUnavailable, "session %s has no running network", s.rec.ID)
	}
	if !follow {
		return n.Events(), nil, nil
	}
	backlog, ch := n.Subscribe(ctx)
	return backlog, ch, nil
}

// summarizePolicy says in a few words what a VM may reach.
func summarizePolicy(p netpolicy.Policy) string {
	var parts []string
	switch {
	case len(p.Allow) == 1 && p.Allow[0] == "*":
		parts = append(parts, "public web")
	case len(p.Allow) == 1:
		parts = append(parts, p.Allow[0])
	default:
		parts = append(parts, fmt.Sprintf("%d hosts", len(p.Allow)))
	}
	if len(p.Secrets) > 0 {
		parts = append(parts, fmt.Sprintf("%d secret%s", len(p.Secrets), plural(len(p.Secrets))))
	}
	if len(p.TCPMaps) > 0 {
		parts = append(parts, fmt.Sprintf("%d tcp map%s", len(p.TCPMaps), plural(len(p.TCPMaps))))
	}
	return strings.Join(parts, ", ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// Policy is a session's network policy, secrets masked.
func (sv *Supervisor) Policy(ref string) (PolicyView, error) {
	s, err := sv.lookup(ref)
	if err != nil {
		return PolicyView{}, err
	}
	return s.policyView()
}

// ChangePolicy edits a live session's network policy.
func (sv *Supervisor) ChangePolicy(ctx context.Context, ref string, ch PolicyChange) (PolicyView, error) {
	s, err := sv.lookup(ref)
	if err != nil {
		return PolicyView{}, err
	}
	return s.changePolicy(ctx, ch)
}

// NetEvents is a session's recent network decisions and, with follow,
// the ones to come (until ctx ends).
func (sv *Supervisor) NetEvents(ctx context.Context, ref string, follow bool) ([]netpolicy.Event, <-chan netpolicy.Event, error) {
	s, err := sv.lookup(ref)
	if err != nil {
		return nil, nil, err
	}
	return s.netEvents(ctx, follow)
}
