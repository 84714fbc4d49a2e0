package netns

import (
	"context"
	"fmt"
	"slices"
)

// AddLink gives the namespace one more macvlan child, of parent (in
// hostNS), named name inside the namespace, set up exactly like those of
// Prepare; it is how an uplink added at run time reaches a running
// INS. On failure nothing is left behind. Not safe for concurrent use on one
// NS.
func (n *NS) AddLink(ctx context.Context, hostNS, parent, name string) (Link, error) {
	if !ValidIfName(name) || !ValidIfName(parent) {
		return Link{}, fmt.Errorf("netns %s: bad interface name %q / parent %q", n.Name, name, parent)
	}
	if hostNS != "" && !validName(hostNS) {
		return Link{}, fmt.Errorf("netns %s: bad host namespace name %q", n.Name, hostNS)
	}
	for _, l := range n.Links {
		if l.Name == name {
			return Link{}, fmt.Errorf("netns %s: interface %s exists", n.Name, name)
		}
	}
	l, err := n.addMacvlan(ctx, hostNS, parent, name)
	if err != nil {
		return Link{}, fmt.Errorf("netns %s: link %s on %s: %w", n.Name, name, parent, err)
	}
	n.Links = append(n.Links, l)
	return l, nil
}

// RemoveLink deletes the macvlan name from the namespace.
func (n *NS) RemoveLink(ctx context.Context, name string) error {
	if !ValidIfName(name) {
		return fmt.Errorf("netns %s: bad interface name %q", n.Name, name)
	}
	if _, err := RunIP(ctx, n.Name, "link", "del", "dev", name); err != nil {
		return fmt.Errorf("netns %s: %w", n.Name, err)
	}
	n.Links = slices.DeleteFunc(n.Links, func(l Link) bool { return l.Name == name })
	return nil
}

// CheckHostLink checks that interface dev exists in namespace hostNS (""
// is the caller's) and can parent INS macvlans: an Ethernet device that is
// not itself a macvlan of an INS.
func CheckHostLink(ctx context.Context, hostNS, dev string) error {
	if !ValidIfName(dev) {
		return fmt.Errorf("bad interface name %q", dev)
	}
	if hostNS != "" && !validName(hostNS) {
		return fmt.Errorf("bad host namespace name %q", hostNS)
	}
	l, err := linkShow(ctx, hostNS, dev)
	if err != nil {
		where := "the daemon's network namespace"
		if hostNS != "" {
			where = "network namespace " + hostNS
		}
		return fmt.Errorf("interface %s not found in %s (see `ip link`): %w", dev, where, err)
	}
	if l.LinkType != "" && l.LinkType != "ether" {
		return fmt.Errorf("interface %s is of link type %s, want an Ethernet device", dev, l.LinkType)
	}
	return nil
}
