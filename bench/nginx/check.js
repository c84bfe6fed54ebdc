// What ops would write by hand today: the same HS256 check of accessTokenEtls in nginx + njs
// (alg pinned, signature, exp) before proxy_pass. The secret is filled in by bench/run.py.
const crypto = require('crypto');
const SECRET = '__ETLS_ACCESS__';

function verify(r) {
    try {
        const token = r.variables.cookie_accessTokenEtls;
        if (!token) return '0';
        const parts = token.split('.');
        if (parts.length !== 3) return '0';
        const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString());
        if (header.alg !== 'HS256') return '0';
        const sig = crypto.createHmac('sha256', SECRET).update(parts[0] + '.' + parts[1]).digest('base64url');
        if (sig !== parts[2]) return '0';
        const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
        if (typeof claims.exp !== 'number' || claims.exp <= Date.now() / 1000) return '0';
        return '1';
    } catch (e) {
        return '0';
    }
}

export default { verify };
