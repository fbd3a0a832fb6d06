import { authGetRoute, authPostRoute } from '@/lib/next/api-routes';

export const runtime = 'nodejs';
export const GET = authGetRoute;
export const POST = authPostRoute;
