# Varnish in front of isr, purged by isr's [[cdn]] kind = "http-purge" (docs: README,
# "CDN purging"). Needs varnish-modules for xkey (Debian: apt-get install varnish-modules).
# tests/cdn.rs runs this file against a real varnishd.
vcl 4.1;

import xkey;

backend isr { .host = "127.0.0.1"; .port = "8080"; }

# Who may purge: the isr nodes.
acl purgers { "127.0.0.1"; }

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        # Tags (xkey = true): PURGE / with an xkey-purge header listing them.
        if (req.http.xkey-purge) {
            set req.http.n-gone = xkey.purge(req.http.xkey-purge);
            return (synth(200, "Invalidated " + req.http.n-gone + " objects"));
        }
        # Paths: PURGE <path>.
        return (purge);
    }
}

sub vcl_backend_response {
    # isr's emit_tags = true sends each page's tags as Surrogate-Key: index them for xkey.
    if (beresp.http.Surrogate-Key) {
        set beresp.http.xkey = beresp.http.Surrogate-Key;
    }
}

sub vcl_deliver {
    # The tags are for this cache, not for browsers.
    unset resp.http.xkey;
    unset resp.http.Surrogate-Key;
    unset resp.http.Cache-Tag;
    unset resp.http.CDN-Cache-Control;
}
