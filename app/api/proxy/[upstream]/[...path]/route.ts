import { proxyRoute } from '@/lib/next/proxy-route';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';

export { proxyRoute as GET, proxyRoute as HEAD, proxyRoute as POST, proxyRoute as PUT, proxyRoute as PATCH };
export { proxyRoute as DELETE, proxyRoute as OPTIONS };
