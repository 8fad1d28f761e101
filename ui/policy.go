package ui

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/sessions"
)

// maxRequests is how many recent network decisions the editor keeps.
const maxRequests = 200

// policyEditor lists a session's allowed hosts and secrets, edits them
// live (the VM's next request sees the change) and follows its network
// decisions.
type policyEditor struct {
	pb      PolicyBackend
	session sessions.Session
	h       *host
	pv      sessions.PolicyView
	loaded  bool
	err     error

	pane   int // 0: allowed hosts, 1: secrets
	cursor [2]int

	requests []netpolicy.Event
	reqCh    <-chan netpolicy.Event
	cancel   context.CancelFunc

	// prompt is the open text entry, if any.
	prompt     *textinput.Model
	promptKind int
	pendingSet string // NAME@HOSTS waiting for its masked value
	confirmRm  string // secret name waiting for y
}

const (
	promptAllow = iota + 1
	promptSecret
	promptValue
)

type (
	policyMsg struct {
		session string
		view    sessions.PolicyView
		err     error
		note    string
	}
	netEventsOpenMsg struct {
		ch  <-chan netpolicy.Event
		err error
	}
	netEventsMsg struct {
		ch     <-chan netpolicy.Event
		events []netpolicy.Event
		closed bool
	}
)

func (m *Model) openPolicy() tea.Cmd {
	pb, s, cmd, ok := liveFeature[PolicyBackend](m, "network policy", "edit the policy of")
	if !ok {
		return cmd
	}
	ctx, cancel := context.WithCancel(m.ctx)
	d := &policyEditor{pb: pb, session: s.Session, h: s.host, cancel: cancel}
	m.dialog = d
	return tea.Batch(d.load(m, ""), func() tea.Msg {
		ch, err := pb.NetworkEvents(ctx, s.ID, true)
		return netEventsOpenMsg{ch: ch, err: err}
	})
}

func (d *policyEditor) load(m *Model, note string) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := m.reqCtx()
		defer cancel()
		v, err := d.pb.Policy(ctx, d.session.ID)
		return policyMsg{session: d.session.ID, view: v, err: err, note: note}
	}
}

func (d *policyEditor) change(m *Model, ch sessions.PolicyChange, note string) tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := m.reqCtx()
		defer cancel()
		v, err := d.pb.ChangePolicy(ctx, d.session.ID, ch)
		return policyMsg{session: d.session.ID, view: v, err: err, note: note}
	}
}

func waitNetEvents(ch <-chan netpolicy.Event) tea.Cmd {
	return func() tea.Msg {
		batch, closed := drain(ch)
		return netEventsMsg{ch: ch, events: batch, closed: closed}
	}
}

func (d *policyEditor) host() *host { return d.h }

// onEvent refreshes the policy when the supervisor says it changed
// (another client, or `gondolin policy`).
func (d *policyEditor) onEvent(m *Model, e sessions.Event) {
	if e.Type == sessions.EventPolicy && e.Session == d.session.ID {
		d.loaded = false
	}
}

func (d *policyEditor) afterEvents(m *Model) tea.Cmd {
	if !d.loaded && d.err == nil {
		return d.load(m, "")
	}
	return nil
}

func (d *policyEditor) close() {
	if d.cancel != nil {
		d.cancel()
	}
}

func (d *policyEditor) update(m *Model, msg tea.Msg) (bool, tea.Cmd) {
	switch msg := msg.(type) {
	case policyMsg:
		if msg.session != d.session.ID {
			return false, nil
		}
		if msg.err != nil {
			d.err = msg.err
			return false, m.setError(msg.err)
		}
		d.pv, d.loaded, d.err = msg.view, true, nil
		d.clampCursors()
		if msg.note != "" {
			return false, m.setStatus(msg.note)
		}
		return false, nil
	case netEventsOpenMsg:
		if msg.err != nil {
			return false, nil // the editor works without the log
		}
		d.reqCh = msg.ch
		return false, waitNetEvents(msg.ch)
	case netEventsMsg:
		if msg.ch != d.reqCh {
			return false, nil
		}
		d.requests = append(d.requests, msg.events...)
		if n := len(d.requests) - maxRequests; n > 0 {
			d.requests = slices.Delete(d.requests, 0, n)
		}
		if msg.closed {
			return false, nil
		}
		return false, waitNetEvents(msg.ch)
	case tea.KeyPressMsg:
		return d.onKey(m, msg)
	}
	if d.prompt != nil {
		var cmd tea.Cmd
		*d.prompt, cmd = d.prompt.Update(msg)
		return false, cmd
	}
	return false, nil
}

func (d *policyEditor) clampCursors() {
	d.cursor[0] = max(0, min(d.cursor[0], len(d.pv.Policy.Allow)-1))
	d.cursor[1] = max(0, min(d.cursor[1], len(d.pv.Policy.Secrets)-1))
}

func (d *policyEditor) openPrompt(kind int, placeholder string, masked bool) tea.Cmd {
	in := textinput.New()
	in.Prompt = "> "
	in.Placeholder = placeholder
	in.CharLimit = 4096
	st := in.Styles()
	st.Cursor.Blink = false
	in.SetStyles(st)
	if masked {
		in.EchoMode = textinput.EchoPassword
		in.EchoCharacter = '•'
	}
	d.prompt, d.promptKind = &in, kind
	return in.Focus()
}

func (d *policyEditor) onKey(m *Model, k tea.KeyPressMsg) (bool, tea.Cmd) {
	key := k.String()
	if key == "ctrl+c" {
		d.close()
		return true, m.quit()
	}
	if d.prompt != nil {
		return d.onPromptKey(m, k)
	}
	if d.confirmRm != "" {
		name := d.confirmRm
		d.confirmRm = ""
		if key == "y" || key == "Y" {
			return false, d.change(m, sessions.PolicyChange{RemoveSecret: name}, "removed secret "+name)
		}
		return false, nil
	}
	switch key {
	case "esc", "q", "p":
		d.close()
		return true, nil
	case "tab", "left", "right", "h", "l":
		d.pane = 1 - d.pane
	case "up", "k":
		d.cursor[d.pane] = max(d.cursor[d.pane]-1, 0)
	case "down", "j":
		d.cursor[d.pane]++
		d.clampCursors()
	case "a":
		if d.pane == 0 {
			return false, d.openPrompt(promptAllow, "host pattern, e.g. *.github.com", false)
		}
		return false, d.openPrompt(promptSecret, "NAME@HOST[,HOST...]", false)
	case "d", "delete", "backspace":
		if d.pane == 0 {
			if pat, ok := d.selectedHost(); ok {
				return false, d.change(m, sessions.PolicyChange{Unallow: pat}, "no longer allowed: "+pat)
			}
		} else if sec, ok := d.selectedSecret(); ok {
			d.confirmRm = sec.Name
		}
	case "r":
		if sec, ok := d.selectedSecret(); ok && d.pane == 1 {
			d.pendingSet = sec.Spec()
			return false, d.openPrompt(promptValue, "new value for "+sec.Name, true)
		}
	}
	return false, nil
}

func (d *policyEditor) onPromptKey(m *Model, k tea.KeyPressMsg) (bool, tea.Cmd) {
	switch k.String() {
	case "esc":
		d.prompt, d.pendingSet = nil, ""
		return false, nil
	case "enter":
		val := strings.TrimSpace(d.prompt.Value())
		switch d.promptKind {
		case promptAllow:
			pat, err := netpolicy.ParseAllowHost(val)
			if err != nil {
				d.prompt.Err = err
				return false, nil
			}
			d.prompt = nil
			return false, d.change(m, sessions.PolicyChange{Allow: pat}, "allowed "+pat)
		case promptSecret:
			if strings.Contains(val, "=") {
				d.prompt.Err = fmt.Errorf("type the value in the next, masked step")
				return false, nil
			}
			sec, err := netpolicy.ParseHostSecret(val+"=x", nil)
			if err != nil {
				d.prompt.Err = err
				return false, nil
			}
			d.pendingSet = sec.Spec()
			return false, d.openPrompt(promptValue, "value for "+sec.Name+" (empty: $"+sec.Name+" here)", true)
		case promptValue:
			value := d.prompt.Value()
			name, _, _ := strings.Cut(d.pendingSet, "@")
			name, _, _ = strings.Cut(name, ":")
			if value == "" {
				value = os.Getenv(name)
			}
			if value == "" {
				d.prompt.Err = fmt.Errorf("empty value, and $%s is not set here", name)
				return false, nil
			}
			set := d.pendingSet
			d.prompt, d.pendingSet = nil, ""
			return false, d.change(m, sessions.PolicyChange{SetSecret: set, SecretValue: &value}, "secret "+name+" set")
		}
	}
	var cmd tea.Cmd
	*d.prompt, cmd = d.prompt.Update(k)
	d.prompt.Err = nil
	return false, cmd
}

func (d *policyEditor) selectedHost() (string, bool) {
	a := d.pv.Policy.Allow
	if len(a) == 0 {
		return "", false
	}
	return a[d.cursor[0]], true
}

func (d *policyEditor) selectedSecret() (netpolicy.Secret, bool) {
	s := d.pv.Policy.Secrets
	if len(s) == 0 {
		return netpolicy.Secret{}, false
	}
	return s[d.cursor[1]], true
}

func (d *policyEditor) view(m *Model, w, h int) string {
	inner := w - 4
	p := d.pv.Policy
	var body []string
	if !d.loaded && d.err == nil {
		body = append(body, "loading…")
		return m.box("Policy · "+displayName(d.session), body, w, h)
	}
	if d.err != nil {
		body = append(body, m.st.errText.Render(oneLine(d.err.Error())), "", m.st.key.Render("esc")+" close")
		return m.box("Policy · "+displayName(d.session), body, w, h)
	}
	colW := max((inner-2)/2, 10)
	title := func(pane int, text string) string {
		if d.pane == pane {
			return m.st.focused.Render(fit("["+text+"]", colW, false))
		}
		return m.st.label.Render(fit(" "+text, colW, false))
	}
	body = append(body, title(0, fmt.Sprintf("Allowed hosts (%d)", len(p.Allow)))+"  "+title(1, fmt.Sprintf("Secrets (%d)", len(p.Secrets))))
	missing := map[string]bool{}
	for _, n := range d.pv.Missing {
		missing[n] = true
	}
	rows := max(len(p.Allow), len(p.Secrets), 1)
	listRows := min(rows, max(h/3, 3))
	for i := 0; i < listRows; i++ {
		left, right := "", ""
		if i < len(p.Allow) {
			left = marker(d.pane == 0 && i == d.cursor[0]) + p.Allow[i]
		} else if i == 0 {
			left = "  (none: every host is blocked)"
		}
		if i < len(p.Secrets) {
			s := p.Secrets[i]
			state := "set"
			if missing[s.Name] {
				state = "NO VALUE"
			}
			right = marker(d.pane == 1 && i == d.cursor[1]) + s.Name + " → " + strings.Join(s.Hosts, ",") + " (" + state + ")"
		} else if i == 0 {
			right = "  (none)"
		}
		body = append(body, fit(left, colW, false)+"  "+fit(right, colW, false))
	}
	var extra []string
	if len(p.Deny) > 0 {
		extra = append(extra, "denied "+strings.Join(p.Deny, " "))
	}
	dns := string(p.DNS)
	if dns == "" {
		dns = string(netpolicy.DNSSynthetic)
	}
	extra = append(extra, "dns "+dns)
	if len(p.TCPMaps) > 0 {
		var maps []string
		for _, t := range p.TCPMaps {
			maps = append(maps, t.String())
		}
		extra = append(extra, "tcp-map "+strings.Join(maps, " "))
	}
	body = append(body, m.st.dim.Render(strings.Join(extra, " · ")), "")

	switch {
	case d.prompt != nil:
		label := map[int]string{promptAllow: "Allow host", promptSecret: "Add secret", promptValue: "Value (hidden)"}[d.promptKind]
		d.prompt.SetWidth(max(inner-20, 10))
		body = append(body, m.st.label.Render(label)+"  "+d.prompt.View())
		if d.prompt.Err != nil {
			body = append(body, m.st.errText.Render(oneLine(d.prompt.Err.Error())))
		}
		body = append(body, m.st.key.Render("enter")+" ok  "+m.st.key.Render("esc")+" cancel", "")
	case d.confirmRm != "":
		body = append(body, m.st.errText.Render("Remove secret "+d.confirmRm+"? Requests that need it will be blocked.")+"  "+m.st.key.Render("y")+" remove  "+m.st.key.Render("n")+" keep", "")
	}

	body = append(body, m.st.label.Render("Recent requests"))
	reqRows := max(h-len(body)-6, 1)
	if len(d.requests) == 0 {
		body = append(body, m.st.dim.Render("  none yet"))
	}
	start := max(0, len(d.requests)-reqRows)
	for _, e := range d.requests[start:] {
		line := requestLine(e)
		if e.Action == netpolicy.Allowed {
			body = append(body, line)
		} else {
			body = append(body, m.st.errText.Render(line))
		}
	}
	body = append(body, "", m.st.key.Render("tab")+" hosts/secrets  "+m.st.key.Render("a")+" add  "+m.st.key.Render("d")+" remove  "+
		m.st.key.Render("r")+" rotate secret  "+m.st.key.Render("esc")+" close")
	return m.box("Policy · "+displayName(d.session)+"  (changes apply to the next request)", body, w, h)
}

func marker(on bool) string {
	if on {
		return "> "
	}
	return "  "
}

// requestLine is one network decision: time, action, protocol, target,
// and why.
// Host, method and path are the guest's: escaped (termsafe).
func requestLine(e netpolicy.Event) string {
	target := e.Host
	if e.Port != 0 && e.Port != 80 && e.Port != 443 {
		target = fmt.Sprintf("%s:%d", e.Host, e.Port)
	}
	line := fmt.Sprintf("%s %-5s %-5s ", e.Time.Local().Format(time.TimeOnly), e.Action, e.Proto)
	if e.Method != "" {
		line += termsafe.String(e.Method) + " "
	}
	line += termsafe.String(target + e.Path)
	if e.Reason != "" {
		line += " (" + termsafe.String(e.Reason) + ")"
	} else if e.Rule != "" {
		line += " [" + termsafe.String(e.Rule) + "]"
	}
	return line
}
